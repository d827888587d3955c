//! `shardgate-bench compare` (being written).

/// Command-line arguments of `shardgate-bench compare`.
#[derive(Debug, clap::Args)]
pub struct CompareArgs {}

/// Run `shardgate-bench compare`.
pub fn run(_args: CompareArgs) -> anyhow::Result<()> {
    anyhow::bail!("shardgate-bench compare is not written yet")
}
