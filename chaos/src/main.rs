//! `chaos`: runs one fault scenario (or the soak) against a real multi-process DTM cluster, prints
//! the verdict with its evidence, writes the history and a JSON report, and exits 1 on a violation
//! (2 when the run itself could not be carried out). `chaos check HISTORY` re-checks a saved history.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use anyhow::bail;
use chaos::limits::NODES_DEFAULT;
use chaos::limits::WRITERS_DEFAULT;
use chaos::scenario::RunOptions;
use chaos::scenario::Scenario;

const USAGE: &str = "usage:
  chaos SCENARIO [--duration SECONDS] [--seed S] [--writers N] [--nodes N] [--out DIR]
                 [--fault-interval SECONDS] [--planted-bug]
  chaos soak --minutes N [--seed S] [...]
  chaos check HISTORY.jsonl
  chaos corrupt [--file PART] [--seed S] [--out DIR]   flip a byte in a stopped node's store and recover it
scenarios: steady, soak, kill-leader, kill-follower, kill-random, pause-leader, pause-follower,
           partition-minority, partition-leader, wipe-rejoin, membership, membership-partition,
           disk-full, clock-skew";

/// Default length of the fault phase of a scenario run.
const DURATION_S_DEFAULT: u64 = 60;

fn main() -> ExitCode {
    match real_main() {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("chaos: {e:#}");
            ExitCode::from(2)
        }
    }
}

/// Parses `--flag value` pairs after the command word.
struct Args {
    words: Vec<String>,
}

impl Args {
    fn value(&self, flag: &str) -> Option<&str> {
        self.words.iter().position(|w| w == flag).and_then(|i| self.words.get(i + 1)).map(String::as_str)
    }
    fn number(&self, flag: &str, default: u64) -> anyhow::Result<u64> {
        match self.value(flag) {
            Some(v) => v.parse().with_context(|| format!("{flag} {v}: not a number")),
            None => Ok(default),
        }
    }
    fn has(&self, flag: &str) -> bool {
        self.words.iter().any(|w| w == flag)
    }
    fn check_known(&self, known: &[&str]) -> anyhow::Result<()> {
        let mut i = 0;
        while i < self.words.len() {
            let w = self.words[i].as_str();
            if w == "--planted-bug" {
                i += 1;
                continue;
            }
            if !known.contains(&w) {
                bail!("unknown argument {w}\n{USAGE}");
            }
            i += 2;
        }
        Ok(())
    }
}

fn real_main() -> anyhow::Result<bool> {
    let mut argv = std::env::args().skip(1);
    let Some(command) = argv.next() else { bail!("{USAGE}") };
    let args = Args { words: argv.collect() };
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let seed = args.number("--seed", 1)?;
    match command.as_str() {
        "-h" | "--help" | "help" => {
            println!("{USAGE}");
            Ok(true)
        }
        "check" => {
            let path = args.words.first().context(USAGE)?;
            let events = chaos::history::load(&PathBuf::from(path))?;
            let verdict = chaos::checker::check(&events);
            print!("{}", verdict.render());
            Ok(verdict.passed())
        }
        "corrupt" => {
            args.check_known(&["--seed", "--out", "--file"])?;
            let target = args.value("--file").unwrap_or("store/db");
            let out = args.value("--out").map(PathBuf::from).unwrap_or_else(|| default_out("corrupt", seed));
            let report = runtime.block_on(until_signal(chaos::corruption::drill(seed, target, &out)))??;
            print!("{}", report.render());
            Ok(report.passed())
        }
        name => {
            let scenario = Scenario::parse(name).with_context(|| format!("unknown scenario {name}\n{USAGE}"))?;
            args.check_known(&[
                "--duration",
                "--minutes",
                "--seed",
                "--writers",
                "--nodes",
                "--out",
                "--fault-interval",
            ])?;
            let duration_s = match scenario {
                Scenario::Soak => args.number("--minutes", 10)? * 60,
                _ => args.number("--duration", DURATION_S_DEFAULT)?,
            };
            let fault_interval = args.value("--fault-interval").map(str::parse::<u64>).transpose()?;
            let opts = RunOptions {
                scenario,
                duration: Duration::from_secs(duration_s),
                seed,
                writers: args.number("--writers", WRITERS_DEFAULT)?,
                nodes: args.number("--nodes", NODES_DEFAULT)?,
                out_dir: args.value("--out").map(PathBuf::from).unwrap_or_else(|| default_out(name, seed)),
                planted_bug: args.has("--planted-bug"),
                fault_interval: fault_interval.map(Duration::from_secs),
            };
            let report = runtime.block_on(until_signal(chaos::scenario::run(opts)))??;
            print!("{}", report.render());
            Ok(report.verdict.passed())
        }
    }
}

/// Runs `run` until it ends or the process gets SIGINT or SIGTERM; dropping the run kills its
/// nodes and removes its network namespaces, so an interrupted run leaves nothing behind.
async fn until_signal<T>(run: impl std::future::Future<Output = T>) -> anyhow::Result<T> {
    use tokio::signal::unix::SignalKind;
    use tokio::signal::unix::signal;
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    tokio::select! {
        v = run => Ok(v),
        _ = term.recv() => bail!("stopped by SIGTERM"),
        _ = int.recv() => bail!("stopped by SIGINT"),
    }
}

/// `target/chaos/<what>-seed<S>` under the current directory.
fn default_out(what: &str, seed: u64) -> PathBuf {
    PathBuf::from("target").join("chaos").join(format!("{what}-seed{seed}"))
}
