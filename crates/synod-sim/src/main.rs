//! `synod-sim`: runs simulation campaigns. `synod-sim --seeds 10000` runs seeds 0..10000 on 3
//! members and reports totals; `--seed S` replays one seed and prints its report.

use std::process::ExitCode;
use std::time::Instant;

use synod_core::planted::Bug;
use synod_sim::world::{FaultCounts, SimConfig, replay_command, run};

struct Args {
    first: u64,
    count: u64,
    members: usize,
    bug: Option<Bug>,
    safety_ms: Option<u64>,
    verbose: bool,
}

fn parse() -> Result<Args, String> {
    let mut args = Args {
        first: 0,
        count: 100,
        members: 3,
        bug: None,
        safety_ms: None,
        verbose: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or_else(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--seed" => {
                args.first = value()?.parse().map_err(|e| format!("--seed: {e}"))?;
                args.count = 1;
                args.verbose = true;
            }
            "--first" => args.first = value()?.parse().map_err(|e| format!("--first: {e}"))?,
            "--seeds" => args.count = value()?.parse().map_err(|e| format!("--seeds: {e}"))?,
            "--members" => {
                args.members = value()?.parse().map_err(|e| format!("--members: {e}"))?
            }
            "--safety-ms" => {
                args.safety_ms = Some(value()?.parse().map_err(|e| format!("--safety-ms: {e}"))?)
            }
            "--bug" => {
                let name = value()?;
                args.bug = Some(Bug::from_name(&name).ok_or_else(|| {
                    let names: Vec<&str> = Bug::ALL.iter().map(|b| b.name()).collect();
                    format!("--bug {name}: not one of {}", names.join(", "))
                })?);
            }
            "-h" | "--help" => {
                return Err(
                    "usage: synod-sim [--seeds N] [--first S] [--seed S] [--members 3|5] [--safety-ms MS] [--bug NAME]"
                        .to_owned(),
                );
            }
            other => return Err(format!("unknown argument {other}")),
        }
    }
    Ok(args)
}

fn main() -> ExitCode {
    let args = match parse() {
        Ok(args) => args,
        Err(message) => {
            eprintln!("{message}");
            return ExitCode::from(2);
        }
    };
    let started = Instant::now();
    let mut faults = FaultCounts::default();
    let (mut operations, mut indeterminate, mut messages, mut entries, mut sim_ms, mut checker_us) =
        (0, 0, 0, 0, 0, 0);
    let mut failures = 0u64;
    for seed in args.first..args.first + args.count {
        let mut config = SimConfig::new(seed);
        config.members = args.members;
        config.bug = args.bug;
        if let Some(ms) = args.safety_ms {
            config.safety_ms = ms;
        }
        let report = run(&config);
        if args.verbose {
            println!("{report:#?}");
        }
        operations += report.operations;
        indeterminate += report.indeterminate;
        messages += report.messages;
        entries += report.entries_applied;
        sim_ms += report.sim_ms;
        checker_us += report.checker_micros;
        faults.add(&report.faults);
        if let Some(violation) = &report.violation {
            failures += 1;
            println!("seed {seed}: {violation}");
            println!("  replay: {}", replay_command(&config));
        }
    }
    let elapsed = started.elapsed();
    println!(
        "{} seeds ({} members{}) in {:.1} s: {failures} failed",
        args.count,
        args.members,
        args.bug
            .map(|b| format!(", bug {}", b.name()))
            .unwrap_or_default(),
        elapsed.as_secs_f64()
    );
    println!(
        "  simulated {:.0} s; {operations} operations answered, {indeterminate} timed out; {entries} entries applied; {messages} messages",
        sim_ms as f64 / 1000.0
    );
    println!(
        "  faults: {} crashes ({} torn writes; {} more inside a turn after the log's fsync, {} inside a snapshot install), {} partitions, {} flapping links, {} slow members, {} slow disks, {} pauses, {} fsync failures, {} full disks, {} learners added, {} promoted, {} members removed; {} messages dropped, {} duplicated",
        faults.crashes,
        faults.torn_writes,
        faults.crashes_after_fsync,
        faults.crashes_in_snapshot_install,
        faults.partitions,
        faults.flapping_links,
        faults.slow_members,
        faults.slow_disks,
        faults.pauses,
        faults.fsync_failures,
        faults.full_disks,
        faults.learners_added,
        faults.promotions,
        faults.removals,
        faults.dropped_messages,
        faults.duplicated_messages
    );
    println!(
        "  linearizability checker: {:.2} s in all",
        checker_us as f64 / 1e6
    );
    if failures > 0 {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}
