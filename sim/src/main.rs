//! `vmm-sim bench|smoke [options]` (`vmm-sim --help` lists them): runs the fleet simulator
//! against the `coordinator` binary built beside it (or `--coordinator PATH`) and prints the
//! table of figures (see `BENCHMARKS.md`). `smoke` is the seconds-long run CI makes: it fails
//! when any host or VM is wrong, never on a time.
#![forbid(unsafe_code)]

use std::time::Duration;

use anyhow::{Context, Result, bail};
use vmm_sim::run::{self, Options};

const USAGE: &str = "\
usage: vmm-sim bench|smoke [options]

  bench                 the full run: 1,000 hosts x 100 VMs, 20 reconnect storms, wrk
  smoke                 a seconds-long run that fails only when a host or VM is wrong

options:
  --hosts N             simulated hosts
  --vms-per-host N      VMs created per host, through the REST API
  --storms N            reconnect storms to run
  --wrk-secs N          how long wrk runs against GET /api/vms
  --no-wrk              skip the wrk figures
  --qemu-report FILE    fold the real-QEMU figures of bench-qemu into the table
  --coordinator PATH    the coordinator binary (default: the one beside vmm-sim)
  -h, --help            this text";

/// The value after `flag`, parsed.
fn value_of<T>(flag: &str, value: Option<String>) -> Result<T>
where
    T: std::str::FromStr,
    T::Err: std::error::Error + Send + Sync + 'static,
{
    let value = value.with_context(|| format!("{flag} needs a value\n{USAGE}"))?;
    value
        .parse()
        .with_context(|| format!("{flag} {value:?} is not valid"))
}

fn main() -> Result<()> {
    let mut args = std::env::args().skip(1);
    let mode = args.next().with_context(|| USAGE.to_owned())?;
    if mode == "-h" || mode == "--help" {
        println!("{USAGE}");
        return Ok(());
    }
    let beside = std::env::current_exe()?
        .parent()
        .context("no directory")?
        .join("coordinator");
    let mut options = match mode.as_str() {
        "bench" => Options::bench(beside),
        "smoke" => Options::smoke(beside),
        _ => bail!("unknown mode {mode:?}\n{USAGE}"),
    };
    while let Some(flag) = args.next() {
        match flag.as_str() {
            "--hosts" => options.hosts = value_of(&flag, args.next())?,
            "--vms-per-host" => options.vms_per_host = value_of(&flag, args.next())?,
            "--storms" => options.storms = value_of(&flag, args.next())?,
            "--qemu-report" => options.qemu_report = Some(value_of(&flag, args.next())?),
            "--coordinator" => options.coordinator = value_of(&flag, args.next())?,
            "--wrk-secs" => {
                options.wrk = Some(Duration::from_secs(value_of(&flag, args.next())?));
            }
            "--no-wrk" => options.wrk = None,
            "-h" | "--help" => {
                println!("{USAGE}");
                return Ok(());
            }
            _ => bail!("unknown argument {flag:?}\n{USAGE}"),
        }
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let report = runtime.block_on(run::run(&options))?;
    println!("{}", run::table(&report));
    if mode == "smoke" && (report.wrong > 0 || report.storms_failed > 0) {
        bail!("the smoke run found hosts or VMs wrong");
    }
    Ok(())
}
