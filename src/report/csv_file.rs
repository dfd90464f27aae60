//! Tables as CSV (`results.csv`, `analyze.csv`): the column titles, then one record
//! per row of cell texts.

use anyhow::Result;

use super::document::Table;

/// `t` as CSV text.
pub fn render(t: &Table) -> Result<String> {
    let mut w = csv::Writer::from_writer(Vec::new());
    w.write_record(&t.columns)?;
    for row in &t.rows {
        w.write_record(row.iter().map(|c| &c.text))?;
    }
    Ok(String::from_utf8(w.into_inner()?)?)
}
