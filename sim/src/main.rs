//! `vmm-sim bench|smoke [--hosts N] [--vms-per-host N] [--storms N] [--qemu-report FILE]
//! [--coordinator PATH]`: runs the fleet simulator against the `coordinator` binary built
//! beside it (or PATH) and prints the table of figures (see `BENCHMARKS.md`). `smoke` is the
//! seconds-long run CI makes: it fails when any host or VM is wrong, never on a time.
#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use vmm_sim::run::{self, Options};

fn usage() -> &'static str {
    "usage: vmm-sim bench|smoke [--hosts N] [--vms-per-host N] [--storms N] \
     [--qemu-report FILE] [--coordinator PATH] [--no-wrk]"
}

fn main() -> Result<()> {
    let mut args = std::env::args().skip(1);
    let mode = args.next().context(usage())?;
    let beside = std::env::current_exe()?
        .parent()
        .context("no directory")?
        .join("coordinator");
    let mut options = match mode.as_str() {
        "bench" => Options::bench(beside),
        "smoke" => Options::smoke(beside),
        _ => bail!(usage()),
    };
    while let Some(flag) = args.next() {
        let mut value = || args.next().with_context(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--hosts" => options.hosts = value()?.parse()?,
            "--vms-per-host" => options.vms_per_host = value()?.parse()?,
            "--storms" => options.storms = value()?.parse()?,
            "--qemu-report" => options.qemu_report = Some(PathBuf::from(value()?)),
            "--coordinator" => options.coordinator = PathBuf::from(value()?),
            "--wrk-secs" => options.wrk = Some(Duration::from_secs(value()?.parse()?)),
            "--no-wrk" => options.wrk = None,
            _ => bail!("unknown argument {flag:?}\n{}", usage()),
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
