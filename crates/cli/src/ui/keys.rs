//! Keys and clicks on the sync tab and its windows: what each one does to [`App`].

use ratatui::crossterm::event::{KeyCode, KeyEvent, KeyEventKind, KeyModifiers};

use super::app::{App, Hit, Item, Request, Window};
use fieldsync_client::SyncOp;

impl App {
    /// A key pressed (releases and repeats of terminals that report them are ignored).
    pub fn key(&mut self, k: KeyEvent) {
        if k.kind == KeyEventKind::Release {
            return;
        }
        if k.modifiers.contains(KeyModifiers::CONTROL) && k.code == KeyCode::Char('c') {
            return self.quit();
        }
        match &mut self.window {
            Window::None => self.key_main(k.code),
            Window::Login { .. } => self.key_login(k.code),
            Window::Tasks { .. } => self.key_tasks(k.code),
            Window::Send { .. } | Window::Discard { .. } => self.key_choice(k.code),
            Window::Progress(w) => match k.code {
                KeyCode::Char('c') | KeyCode::Enter | KeyCode::Esc if !w.running() => {
                    self.close_result_window()
                }
                KeyCode::Char('c') | KeyCode::Enter => self.cancel(),
                _ => {}
            },
            Window::Error { .. } => {
                if matches!(k.code, KeyCode::Char('c') | KeyCode::Enter | KeyCode::Esc) {
                    self.close_result_window();
                }
            }
        }
    }

    fn key_main(&mut self, code: KeyCode) {
        let i = Item::ALL.iter().position(|i| *i == self.focus).unwrap_or(0);
        let n = Item::ALL.len();
        match code {
            KeyCode::Tab | KeyCode::Down | KeyCode::Right => self.focus = Item::ALL[(i + 1) % n],
            KeyCode::BackTab | KeyCode::Up | KeyCode::Left => {
                self.focus = Item::ALL[(i + n - 1) % n]
            }
            KeyCode::Enter | KeyCode::Char(' ') => self.activate(self.focus),
            KeyCode::Char(c) => {
                if let Some(item) = Item::ALL.into_iter().find(|i| i.key() == c) {
                    self.activate(item);
                }
            }
            _ => {}
        }
    }

    fn key_login(&mut self, code: KeyCode) {
        let Window::Login {
            user,
            password,
            focus,
        } = &mut self.window
        else {
            return;
        };
        match code {
            KeyCode::Esc => self.window = Window::None,
            KeyCode::Tab | KeyCode::Down => *focus = (*focus + 1) % 4,
            KeyCode::BackTab | KeyCode::Up => *focus = (*focus + 3) % 4,
            KeyCode::Enter if *focus == 0 => *focus = 1,
            KeyCode::Enter if *focus == 3 => self.window = Window::None,
            KeyCode::Enter => {
                let request = Request::Login {
                    user: std::mem::take(user),
                    password: std::mem::take(password),
                };
                self.window = Window::None;
                self.ask("logging in", request);
            }
            KeyCode::Backspace if *focus == 0 => drop(user.pop()),
            KeyCode::Backspace if *focus == 1 => drop(password.pop()),
            KeyCode::Char(c) if *focus == 0 => user.push(c),
            KeyCode::Char(c) if *focus == 1 => password.push(c),
            _ => {}
        }
    }

    fn key_tasks(&mut self, code: KeyCode) {
        let Window::Tasks { tasks, selected } = &mut self.window else {
            return;
        };
        let n = tasks.as_ref().map_or(0, Vec::len);
        match code {
            KeyCode::Esc => self.window = Window::None,
            KeyCode::Down | KeyCode::Tab if n > 0 => *selected = (*selected + 1) % n,
            KeyCode::Up | KeyCode::BackTab if n > 0 => *selected = (*selected + n - 1) % n,
            KeyCode::Enter if n > 0 => {
                let task = tasks.as_ref().map(|t| t[*selected].name.clone());
                if let Some(task) = task {
                    self.pick(task);
                }
            }
            _ => {}
        }
    }

    /// A task was picked: download it, after a confirmation if that would discard
    /// local changes.
    fn pick(&mut self, task: String) {
        match self.own_pending() {
            0 => self.download(task, false),
            unsent => {
                self.window = Window::Discard {
                    task,
                    unsent,
                    focus: 1,
                }
            }
        }
    }

    /// The two-button windows: Send (Execute / Back) and Discard (yes / keep).
    fn key_choice(&mut self, code: KeyCode) {
        let (Window::Send { focus } | Window::Discard { focus, .. }) = &mut self.window else {
            return;
        };
        let pressed = match code {
            KeyCode::Tab | KeyCode::BackTab | KeyCode::Left | KeyCode::Right => {
                *focus = 1 - *focus;
                return;
            }
            KeyCode::Enter | KeyCode::Char(' ') => *focus,
            KeyCode::Char('e' | 'y') => 0,
            KeyCode::Char('n') | KeyCode::Esc => 1,
            _ => return,
        };
        self.press(pressed);
    }

    /// Presses button `i` of the open window.
    fn press(&mut self, i: usize) {
        match std::mem::replace(&mut self.window, Window::None) {
            Window::Send { .. } if i == 0 => self.start(SyncOp::Send, Request::Send),
            Window::Discard { task, .. } if i == 0 => self.download(task, true),
            Window::Login {
                user,
                password,
                focus: _,
            } => {
                self.window = Window::Login {
                    user,
                    password,
                    focus: i,
                };
                if i >= 2 {
                    self.key_login(KeyCode::Enter);
                }
            }
            Window::Progress(w) if w.running() => {
                self.window = Window::Progress(w);
                self.cancel();
            }
            Window::Send { .. } | Window::Discard { .. } => {}
            Window::Progress(_) | Window::Error { .. } | Window::None => {}
            other @ Window::Tasks { .. } => self.window = other,
        }
    }

    pub fn click(&mut self, hit: Hit) {
        match (hit, &mut self.window) {
            (Hit::Item(item), Window::None) => self.activate(item),
            (Hit::Row(r), Window::Tasks { tasks, selected }) => {
                if let Some(t) = tasks.as_ref().and_then(|t| t.get(r)) {
                    *selected = r;
                    let task = t.name.clone();
                    self.pick(task);
                }
            }
            (Hit::Button(1), Window::Tasks { .. }) => self.window = Window::None,
            (Hit::Button(0), Window::Tasks { .. }) => self.key_tasks(KeyCode::Enter),
            (Hit::Button(b), _) => self.press(b),
            _ => {}
        }
    }
}
