pub async fn run(_a: DemoArgs) -> anyhow::Result<()> {
    Ok(())
}
#[derive(clap::Args, Debug)]
pub struct DemoArgs {}
