//! Prints the chaos suite's summary table from the rows its cases recorded
//! (`<target>/chaos-summary.jsonl`, or `TCPULSE_CHAOS_SUMMARY`). `scripts/test` runs it after
//! the tests.

use anyhow::Result;
use tcpulse_tests::chaos;

fn main() -> Result<()> {
    let path = chaos::summary_path()?;
    let rows = chaos::read_rows(&path)?;
    if rows.is_empty() {
        println!("chaos suite: no case recorded a row in {}", path.display());
        return Ok(());
    }
    println!("\nchaos suite summary ({}):", path.display());
    print!("{}", chaos::table(&rows));
    Ok(())
}
