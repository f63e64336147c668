use eventlog::{ccel::tcg_enum::TcgAlgorithm, CcEventLog, ReferenceMeasurement};
use std::fs;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let data = fs::read(&args[1]).expect("read log");
    let log = CcEventLog::try_from(data).expect("Trustee's parser rejected the log");
    if args.len() > 2 {
        let rtmrs = fs::read_to_string(&args[2]).expect("read rtmrs");
        let refs: Vec<ReferenceMeasurement> = rtmrs
            .lines()
            .enumerate()
            .map(|(i, l)| ReferenceMeasurement {
                index: i as u32 + 1,
                algorithm: TcgAlgorithm::Sha384,
                reference: hex::decode(l.trim()).unwrap(),
            })
            .collect();
        log.replay_and_match(refs).expect("replay against the RTMRs failed");
        eprintln!("replay of MR 1-4 matches RTMR0-3");
    }
    println!("{}", serde_json::to_string_pretty(&log).unwrap());
}
