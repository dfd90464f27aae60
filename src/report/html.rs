//! `index.html`: the report as one self-contained page (inline CSS, inline SVG, a
//! few lines of inline JavaScript to sort the tables), which loads nothing.

use std::fmt::Write;

use super::document::{Content, Document, Plot, Section, Table};

const STYLE: &str = r#"
body { margin: 0; color: #222; background: #fff;
  font-family: Charter, "Bitstream Charter", Georgia, "Times New Roman", serif; line-height: 1.45; }
main { max-width: 1240px; margin: 0 auto; padding: 20px 28px 40px; }
h1 { font-size: 28px; margin: 8px 0 4px; }
h2 { font-size: 21px; margin: 34px 0 8px; border-bottom: 1px solid #ccc; padding-bottom: 3px; }
p.note, figcaption, footer { font-size: 14px; color: #444; max-width: 70em; }
nav a { margin-right: 14px; color: #1f4e8c; }
.scroll { overflow-x: auto; }
table { border-collapse: collapse; font-size: 13px; margin: 10px 0;
  font-family: "Helvetica Neue", Arial, sans-serif; font-variant-numeric: tabular-nums; }
th, td { padding: 4px 9px; text-align: left; white-space: nowrap; border-bottom: 1px solid #e2e2e2; }
td.num, th.num { text-align: right; }
td.nosignal { color: #999; }
thead th { border-top: 2px solid #333; border-bottom: 1.5px solid #333; cursor: pointer; user-select: none; }
tbody tr:last-child td { border-bottom: 2px solid #333; }
tbody tr:hover { background: #f4f7fb; }
th[aria-sort="ascending"]::after { content: " \25B2"; font-size: 10px; }
th[aria-sort="descending"]::after { content: " \25BC"; font-size: 10px; }
ul.disagree { font-size: 14px; margin-top: 2px; }
.grid { display: grid; grid-template-columns: repeat(auto-fill, minmax(540px, 1fr)); gap: 22px 30px; }
figure { margin: 0; }
figure svg { width: 100%; height: auto; display: block; }
#page-errors { color: #b00; white-space: pre-wrap; border: 1px solid #b00; padding: 8px; }
"#;

/// Writes script errors into `#page-errors`, so that a headless browser's DOM dump
/// shows whether the page's script failed.
const ERROR_HOOK: &str = r#"
window.onerror = function (message, source, line) {
  var box = document.getElementById('page-errors');
  box.hidden = false;
  box.textContent += message + ' (line ' + line + ')\n';
};
"#;

/// Sorting on a header click: numbers by their `data-sort` value, text as text;
/// ties keep their order. Marks the body when done, so that a check can tell the
/// script ran.
const SORT_SCRIPT: &str = r#"
(function () {
  function key(cell) {
    var v = cell.getAttribute('data-sort');
    return v === null ? cell.textContent : parseFloat(v);
  }
  function compare(x, y) {
    var nx = typeof x === 'number', ny = typeof y === 'number';
    if (nx && ny) return x - y;
    if (nx !== ny) return nx ? -1 : 1;
    return x.localeCompare(y);
  }
  document.querySelectorAll('table.sortable').forEach(function (table) {
    var heads = table.tHead.rows[0].cells;
    Array.prototype.forEach.call(heads, function (th, col) {
      th.addEventListener('click', function () {
        var asc = th.getAttribute('aria-sort') !== 'ascending';
        Array.prototype.forEach.call(heads, function (h) { h.removeAttribute('aria-sort'); });
        th.setAttribute('aria-sort', asc ? 'ascending' : 'descending');
        var body = table.tBodies[0];
        var rows = Array.prototype.slice.call(body.rows);
        rows.sort(function (a, b) {
          var c = compare(key(a.cells[col]), key(b.cells[col]));
          return asc ? c : -c;
        });
        rows.forEach(function (r) { body.appendChild(r); });
      });
    });
  });
  document.body.setAttribute('data-ready', 'sortable');
})();
"#;

/// Escapes text for HTML content and attribute values.
fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// Inline Markdown code spans (the notes use them) as `<code>`.
fn inline(s: &str) -> String {
    let mut out = String::new();
    for (i, part) in esc(s).split('`').enumerate() {
        if i % 2 == 1 {
            let _ = write!(out, "<code>{part}</code>");
        } else {
            out.push_str(part);
        }
    }
    out
}

fn table(id: &str, t: &Table) -> String {
    let numeric: Vec<bool> = (0..t.columns.len()).map(|i| t.numeric(i)).collect();
    let class = |i: usize| if numeric[i] { " class=\"num\"" } else { "" };
    let mut out =
        format!("<div class=\"scroll\"><table class=\"sortable\" id=\"{id}\">\n<thead><tr>");
    for (i, c) in t.columns.iter().enumerate() {
        let _ = write!(out, "<th{}>{}</th>", class(i), esc(c));
    }
    out.push_str("</tr></thead>\n<tbody>\n");
    for row in &t.rows {
        out.push_str("<tr>");
        for (i, cell) in row.iter().enumerate() {
            let sort = cell
                .sort
                .map(|v| format!(" data-sort=\"{v}\""))
                .unwrap_or_default();
            let class = match (numeric[i], cell.no_signal) {
                (true, true) => " class=\"num nosignal\"",
                (false, true) => " class=\"nosignal\"",
                _ => class(i),
            };
            let _ = write!(out, "<td{class}{sort}>{}</td>", esc(&cell.text));
        }
        out.push_str("</tr>\n");
    }
    out.push_str("</tbody></table></div>\n");
    out
}

/// A plot inline. Inside HTML an `<svg>` needs no namespace declaration; leaving it
/// out keeps the page free of any URL.
fn figure(p: &Plot) -> String {
    let id = p.file.trim_end_matches(".svg");
    let svg = p.svg.replacen(
        r#" xmlns="http://www.w3.org/2000/svg""#,
        &format!(r#" role="img" aria-label="{}""#, esc(&p.title)),
        1,
    );
    format!(
        "<figure class=\"plot\" id=\"fig-{id}\">\n{svg}<figcaption>{}</figcaption>\n</figure>\n",
        esc(&p.caption)
    )
}

/// A section's opening: its anchor, heading and explanatory note.
fn section_open(s: &Section) -> String {
    let mut out = format!("<section id=\"{}\"><h2>{}</h2>\n", s.id, esc(s.title));
    if let Some(note) = s.note {
        let _ = writeln!(out, "<p class=\"note\">{}</p>", inline(note));
    }
    out
}

/// The whole page.
pub fn render(doc: &Document) -> String {
    let mut body = String::new();
    for s in &doc.sections {
        match &s.content {
            Content::Table {
                id,
                table: t,
                lists,
            } => {
                body.push_str(&section_open(s));
                body.push_str(&table(id, t));
                for list in lists.iter().filter(|l| !l.items.is_empty()) {
                    let _ = write!(
                        body,
                        "<p class=\"note\">{}</p>\n<ul class=\"disagree\">\n",
                        esc(&list.heading)
                    );
                    for item in &list.items {
                        let _ = writeln!(body, "<li>{}</li>", esc(item));
                    }
                    body.push_str("</ul>\n");
                }
                body.push_str("</section>\n");
            }
            Content::Figures(figures) => {
                body.push_str(&section_open(s));
                body.push_str("<div class=\"grid\">\n");
                for p in figures {
                    body.push_str(&figure(p));
                }
                body.push_str("</div></section>\n");
            }
        }
    }
    let nav: Vec<String> = doc
        .sections
        .iter()
        .map(|s| format!("<a href=\"#{}\">{}</a>", s.id, s.nav))
        .collect();
    let title = esc(doc.title);
    format!(
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n\
         <title>{title}</title>\n<style>{STYLE}</style>\n</head>\n<body>\n\
         <div id=\"page-errors\" hidden></div>\n<script>{ERROR_HOOK}</script>\n<main>\n\
         <h1>{title}</h1>\n<p>{}</p>\n<nav>{}</nav>\n{body}\
         <footer>\n<hr>\n<p>{}</p>\n\
         <p id=\"generated\">{}</p>\n</footer>\n</main>\n<script>{SORT_SCRIPT}</script>\n</body>\n</html>\n",
        esc(&doc.overview),
        nav.join(""),
        inline(doc.footer),
        esc(&doc.generated)
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::document::build;
    use crate::report::plots;
    use crate::report::tests::fixture_results;

    fn page(r: &crate::report::Results, plots: &[Plot], generated: &str) -> String {
        render(&build(r, plots, generated.into()))
    }

    #[test]
    fn the_page_holds_every_table_and_plot_and_no_address() {
        let r = fixture_results();
        let plots = plots::all(&r).unwrap();
        let page = page(&r, &plots, "generated: now");
        assert_eq!(page.matches("<table class=\"sortable\"").count(), 4);
        assert_eq!(page.matches("<svg").count(), plots.len());
        assert_eq!(
            page.matches("<p id=\"generated\">generated: now</p>")
                .count(),
            1
        );
        assert!(!page.contains("http"), "the page must load nothing");
    }

    #[test]
    fn no_signal_cells_are_greyed() {
        let mut r = fixture_results();
        assert!(!page(&r, &[], "generated: now").contains("nosignal\""));
        r.evals = crate::report::evals::tests::with_chance_levels();
        let page = page(&r, &[], "generated: now");
        // The grid's cell and the scores table's peak: the one result with no signal.
        assert_eq!(page.matches("<td class=\"num nosignal\"").count(), 2);
        assert!(page.contains("td.nosignal { color"));
    }

    #[test]
    fn text_is_escaped_and_code_spans_kept() {
        assert_eq!(esc("a<b & \"c\">"), "a&lt;b &amp; &quot;c&quot;&gt;");
        assert_eq!(inline("see `x<y`"), "see <code>x&lt;y</code>");
    }
}
