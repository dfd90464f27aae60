//! `leaderboard.md`: the report as GitHub Markdown, its figures linked from `plots/`.

use std::fmt::Write;

use super::document::{Content, Document, Table};

/// A table as GitHub Markdown, numeric columns right-aligned.
pub fn table(t: &Table) -> String {
    let mut out = format!("| {} |\n|", t.columns.join(" | "));
    for i in 0..t.columns.len() {
        out.push_str(if t.numeric(i) { "---:|" } else { "---|" });
    }
    out.push('\n');
    for row in &t.rows {
        let cells: Vec<String> = row.iter().map(|c| c.text.replace('|', "\\|")).collect();
        let _ = writeln!(out, "| {} |", cells.join(" | "));
    }
    out
}

/// The whole of `leaderboard.md`. Every figure goes under one "Plots" heading: a
/// Markdown page of images reads better without a heading per kind.
pub fn render(doc: &Document) -> String {
    let mut out = format!("# {}\n\n{}\n\n", doc.title, doc.overview);
    let mut plots_heading = false;
    for s in &doc.sections {
        match &s.content {
            Content::Table {
                table: t, lists, ..
            } => {
                let _ = writeln!(out, "## {}\n", s.title);
                if let Some(note) = s.note {
                    let _ = writeln!(out, "{note}\n");
                }
                out.push_str(&table(t));
                out.push('\n');
                for list in lists {
                    let _ = writeln!(out, "{}\n", list.heading);
                    if list.items.is_empty() {
                        out.push_str("- nowhere\n");
                    }
                    for item in &list.items {
                        let _ = writeln!(out, "- {item}");
                    }
                    out.push('\n');
                }
            }
            Content::Figures(figures) => {
                if !plots_heading {
                    out.push_str("## Plots\n\n");
                    plots_heading = true;
                }
                for p in figures {
                    let _ = writeln!(out, "![{}]({})\n\n{}\n", p.title, p.path(), p.caption);
                }
            }
        }
    }
    let _ = writeln!(out, "---\n\n{}\n\n{}", doc.footer, doc.generated);
    out
}
