//! The console's HTML, written with `format!`: every value from the database or the
//! request goes through [`esc`] (text and attribute values alike), and nothing else
//! is interpolated but the console's own constants. One stylesheet, no script.

use std::fmt::Write;

/// `text` safe in HTML text and in a double-quoted attribute value.
pub fn esc(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// `text` as one path segment of a URL (its unreserved characters kept).
pub fn seg(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

/// The signed-in administrator's page chrome: the navigation and the logout form.
pub struct Chrome<'a> {
    pub user: &'a str,
    pub csrf: &'a str,
    /// The navigation entry of this page (`fleet`, `conflicts`, `tasks`, `people`).
    pub at: &'a str,
}

/// A whole page: `title` and `body` (already HTML) inside the console's layout.
pub fn page(chrome: Option<&Chrome<'_>>, title: &str, body: &str) -> String {
    let mut nav = String::new();
    if let Some(c) = chrome {
        nav.push_str(r#"<nav aria-label="Console"><ul>"#);
        for (key, href, label) in [
            ("fleet", "/admin", "Fleet"),
            ("conflicts", "/admin/conflicts", "Conflicts"),
            ("tasks", "/admin/tasks", "Tasks"),
            ("people", "/admin/people", "Users and devices"),
        ] {
            let current = if key == c.at {
                r#" aria-current="page""#
            } else {
                ""
            };
            let _ = write!(nav, r#"<li><a href="{href}"{current}>{label}</a></li>"#);
        }
        let _ = write!(
            nav,
            r#"</ul><form method="post" action="/admin/logout" class="logout">{}<span>{}</span> <button type="submit">Log out</button></form></nav>"#,
            csrf_field(c.csrf),
            esc(c.user)
        );
    }
    format!(
        r#"<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title} · fieldsync console</title>
<link rel="stylesheet" href="/admin/console.css">
</head><body>
<a class="skip" href='#main'>Skip to the page's content</a>
<header><span class="brand">fieldsync console</span>{nav}</header>
<main id="main"><h1>{title}</h1>
{body}
</main></body></html>"#,
        title = esc(title),
    )
}

/// The hidden field every form carries (checked by `console::csrf_ok`).
pub fn csrf_field(token: &str) -> String {
    format!(
        r#"<input type="hidden" name="csrf" value="{}">"#,
        esc(token)
    )
}

/// A one-button form posting to `action` (already a safe path).
pub fn button_form(action: &str, csrf: &str, label: &str, extra: &str) -> String {
    format!(
        r#"<form method="post" action="{action}" class="inline">{}{extra}<button type="submit">{}</button></form>"#,
        csrf_field(csrf),
        esc(label)
    )
}

/// A notice above a page's content: `kind` is `ok` or `error`.
pub fn notice(kind: &str, text: &str) -> String {
    let role = if kind == "error" { "alert" } else { "status" };
    format!(
        r#"<p class="notice {kind}" role="{role}">{}</p>"#,
        esc(text)
    )
}

/// A time for a person: `2026-12-03 21:51 UTC`, the exact time in its `datetime`.
pub fn when(t: fieldsync_proto::time::Timestamp) -> String {
    let full = t.to_string();
    let short = full.get(..16).unwrap_or(&full).replace('T', " ");
    format!(r#"<time datetime="{full}" title="{full}">{short}</time>"#)
}

/// Bytes for a person: B, kB, MB.
pub fn bytes(n: u64) -> String {
    match n {
        n if n < 10_000 => format!("{n} B"),
        n if n < 10_000_000 => format!("{} kB", n / 1000),
        n => format!("{} MB", n / 1_000_000),
    }
}

/// The stylesheet: system fonts, contrast at least 4.5:1 (WCAG AA) for all text,
/// a visible focus ring, tables that scroll sideways on a narrow screen.
pub const CSS: &str = r#"
:root { --fg:#1b1f24; --muted:#4a525c; --bg:#ffffff; --line:#c9ced6; --accent:#0b57a4;
  --bad:#a4161a; --badbg:#fdecec; --warn:#7a4a00; --warnbg:#fff4e0; --okc:#1e6b34; }
* { box-sizing: border-box; }
body { margin:0; font:16px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif;
  color:var(--fg); background:var(--bg); }
header { background:#12263f; color:#fff; padding:.5rem 1rem; display:flex; flex-wrap:wrap;
  align-items:center; gap:1rem; }
.brand { font-weight:700; }
.skip { position:absolute; left:-999px; top:0; background:#fff; color:var(--accent); padding:.5rem; }
.skip:focus { left:.5rem; z-index:1; }
nav { display:flex; flex-wrap:wrap; align-items:center; gap:1rem; flex:1; }
nav ul { list-style:none; margin:0; padding:0; display:flex; flex-wrap:wrap; gap:.25rem 1rem; }
nav a { color:#fff; text-decoration:none; padding:.25rem .1rem; border-bottom:3px solid transparent; }
nav a[aria-current=page] { border-bottom-color:#9cc8ff; }
nav a:hover { text-decoration:underline; }
nav .logout { margin-left:auto; color:#fff; }
main { padding:1rem; max-width:1400px; }
h1 { font-size:1.5rem; margin:.25rem 0 1rem; }
h2 { font-size:1.2rem; margin:1.5rem 0 .5rem; }
a { color:var(--accent); }
:focus-visible { outline:3px solid #f0a000; outline-offset:2px; }
.scroll { overflow-x:auto; }
.scroll.wide > table { min-width:60rem; }
td.msg { min-width:16rem; }
time { white-space:nowrap; }
table { border-collapse:collapse; width:100%; margin:.5rem 0 1rem; font-size:.95rem; }
th, td { border-bottom:1px solid var(--line); padding:.35rem .5rem; text-align:left; vertical-align:top; }
th { background:#eef1f5; }
td.num { text-align:right; font-variant-numeric:tabular-nums; }
tr.stuck td { background:var(--warnbg); }
.bad { color:var(--bad); font-weight:600; }
.warn { color:var(--warn); font-weight:600; }
.good { color:var(--okc); }
.muted { color:var(--muted); }
.notice { padding:.5rem .75rem; border-radius:4px; }
.notice.ok { background:#e7f5ea; color:var(--okc); }
.notice.error { background:var(--badbg); color:var(--bad); }
form.inline { display:inline; }
form.stack { display:grid; gap:.5rem; max-width:24rem; margin:.5rem 0 1rem; }
form.row { display:flex; flex-wrap:wrap; gap:.5rem; align-items:end; margin:.5rem 0 1rem; }
label { display:block; font-weight:600; }
input[type=text], input[type=password], select { font:inherit; padding:.35rem .5rem;
  border:1px solid #767d87; border-radius:4px; min-width:12rem; }
button { font:inherit; padding:.35rem .8rem; border-radius:4px; border:1px solid var(--accent);
  background:var(--accent); color:#fff; cursor:pointer; }
button.secondary { background:#fff; color:var(--accent); }
.code { font:1.4rem ui-monospace, monospace; letter-spacing:.1em; padding:.5rem; background:#eef1f5; }
.side { display:grid; grid-template-columns:repeat(auto-fit, minmax(18rem, 1fr)); gap:1rem; }
.card { border:1px solid var(--line); border-radius:6px; padding:.75rem; margin:.75rem 0; }
"#;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escaping_leaves_no_markup_and_segments_no_separator() {
        assert_eq!(
            esc(r#"<a href="x">'&'</a>"#),
            "&lt;a href=&quot;x&quot;&gt;&#39;&amp;&#39;&lt;/a&gt;"
        );
        assert_eq!(seg("a b/c?d"), "a%20b%2Fc%3Fd");
        assert_eq!(seg("tab-1_x.y"), "tab-1_x.y");
    }
}
