//! The drawing kit of the sync tab: a theme that stays readable without colour, and a
//! builder of text rows with buttons that records where each button is, for clicks.

use ratatui::Frame;
use ratatui::layout::Rect;
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Clear, Paragraph};

use super::app::Hit;

/// Colours add to the meaning, never carry it alone: results have `[OK]`/`[ERROR]`
/// markers, and the focus is in reverse video.
#[derive(Clone, Copy)]
pub struct Theme {
    pub color: bool,
}

impl Theme {
    fn fg(self, c: Color) -> Style {
        if self.color {
            Style::new().fg(c)
        } else {
            Style::new()
        }
    }

    pub fn ok(self) -> Style {
        self.fg(Color::Green).add_modifier(Modifier::BOLD)
    }

    pub fn bad(self) -> Style {
        self.fg(Color::Red).add_modifier(Modifier::BOLD)
    }

    pub fn dim(self) -> Style {
        if self.color {
            Style::new().fg(Color::DarkGray)
        } else {
            Style::new()
        }
    }

    pub fn heading(self) -> Style {
        Style::new().add_modifier(Modifier::BOLD)
    }

    pub fn focus(self) -> Style {
        Style::new().add_modifier(Modifier::REVERSED)
    }
}

/// Rows of spans drawn into an area, with the places of the buttons in it.
pub struct Rows {
    pub area: Rect,
    pub theme: Theme,
    lines: Vec<Line<'static>>,
    x: u16,
    pub hits: Vec<(Rect, Hit)>,
}

impl Rows {
    pub fn new(area: Rect, theme: Theme) -> Rows {
        Rows {
            area,
            theme,
            lines: vec![Line::default()],
            x: 0,
            hits: vec![],
        }
    }

    pub fn text(&mut self, s: impl Into<String>, style: Style) -> &mut Self {
        let s: String = s.into();
        self.x += s.chars().count() as u16;
        self.lines
            .last_mut()
            .expect("a row")
            .spans
            .push(Span::styled(s, style));
        self
    }

    pub fn plain(&mut self, s: impl Into<String>) -> &mut Self {
        self.text(s, Style::new())
    }

    /// `[ label ]`, in reverse video when focused; a click on it is `hit`.
    pub fn button(&mut self, label: &str, hit: Hit, focused: bool) -> &mut Self {
        self.clickable(format!("[ {label} ]"), hit, focused)
    }

    /// Spaces up to column `x` of the row.
    pub fn pad_to(&mut self, x: u16) -> &mut Self {
        let n = x.saturating_sub(self.x) as usize;
        self.plain(" ".repeat(n))
    }

    /// Text that a click presses, in reverse video when focused.
    pub fn clickable(&mut self, text: String, hit: Hit, focused: bool) -> &mut Self {
        let y = self.area.y + self.lines.len() as u16 - 1;
        let width = text.chars().count() as u16;
        let rect = Rect::new(self.area.x + self.x, y, width, 1).intersection(self.area);
        self.hits.push((rect, hit));
        let style = if focused {
            self.theme.focus()
        } else {
            Style::new()
        };
        self.text(text, style)
    }

    pub fn newline(&mut self) -> &mut Self {
        self.lines.push(Line::default());
        self.x = 0;
        self
    }

    /// `text` in lines of the area's width less `indent`, each indented, broken
    /// between words (a word longer than a line is cut).
    pub fn wrapped(&mut self, text: &str, indent: u16, style: Style, max_lines: usize) {
        let width = self.area.width.saturating_sub(indent + 1).max(10) as usize;
        for (i, line) in wrap(text, width).into_iter().take(max_lines).enumerate() {
            if i > 0 {
                self.newline();
            }
            self.plain(" ".repeat(indent as usize));
            self.text(line, style);
        }
    }

    /// Starts the area's last row (for a window's buttons), below what is there.
    pub fn at_bottom(&mut self) -> &mut Self {
        self.newline();
        while self.lines.len() < self.area.height as usize {
            self.newline();
        }
        self
    }

    /// How many rows there are so far.
    pub fn rows(&self) -> usize {
        self.lines.len()
    }

    /// Draws the rows; returns where the buttons are.
    pub fn draw(self, f: &mut Frame) -> Vec<(Rect, Hit)> {
        f.render_widget(Paragraph::new(self.lines), self.area);
        self.hits
    }
}

/// `text` in lines of at most `width` characters, broken at spaces where it can be.
pub fn wrap(text: &str, width: usize) -> Vec<String> {
    let mut lines = vec![];
    let mut line = String::new();
    for word in text.split_whitespace() {
        let mut word: Vec<char> = word.chars().collect();
        let used = line.chars().count();
        if used > 0 && used + 1 + word.len() <= width {
            line.push(' ');
            line.extend(&word);
            continue;
        }
        if used > 0 {
            lines.push(std::mem::take(&mut line));
        }
        while word.len() > width {
            lines.push(word.drain(..width).collect());
        }
        line = word.into_iter().collect();
    }
    if !line.is_empty() || lines.is_empty() {
        lines.push(line);
    }
    lines
}

/// A window of `width`×`height` in the middle of `area`, cleared and framed; returns
/// its inside.
pub fn window(f: &mut Frame, area: Rect, width: u16, height: u16, title: &str) -> Rect {
    let w = width.min(area.width);
    let h = height.min(area.height);
    let outer = Rect::new(
        area.x + (area.width - w) / 2,
        area.y + (area.height - h) / 2,
        w,
        h,
    );
    f.render_widget(Clear, outer);
    let block = Block::bordered().title(format!(" {title} "));
    let inner = block.inner(outer);
    f.render_widget(block, outer);
    Rect::new(
        inner.x + 1,
        inner.y,
        inner.width.saturating_sub(2),
        inner.height,
    )
}

#[cfg(test)]
mod tests {
    use super::wrap;

    #[test]
    fn text_wraps_between_words_and_cuts_only_words_too_long() {
        assert_eq!(
            wrap("sent 3 changes; all kept", 10),
            ["sent 3", "changes;", "all kept"]
        );
        assert_eq!(wrap("abcdefghijkl xy", 5), ["abcde", "fghij", "kl xy"]);
        assert_eq!(wrap("", 5), [""]);
    }
}
