//! `shardgate-bench upstream` (being written).

/// Command-line arguments of `shardgate-bench upstream`.
#[derive(Debug, clap::Args)]
pub struct UpstreamArgs {}

/// Run `shardgate-bench upstream`.
pub fn run(_args: UpstreamArgs) -> anyhow::Result<()> {
    anyhow::bail!("shardgate-bench upstream is not written yet")
}
