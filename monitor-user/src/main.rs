fn main() -> anyhow::Result<()> {
    let mut ebpf = aya::EbpfLoader::new().load(aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/apimon")))?;
    let names: Vec<String> = ebpf.programs().map(|(n, _)| n.to_string()).collect();
    for name in names {
        let p = ebpf.program_mut(&name).unwrap();
        let r = match p {
            aya::programs::Program::TracePoint(t) => t.load(),
            aya::programs::Program::UProbe(u) => u.load(),
            _ => Ok(()),
        };
        match r { Ok(()) => println!("{name}: ok"), Err(e) => { println!("{name}: {e}"); if let aya::programs::ProgramError::LoadError{verifier_log, ..} = e { let s = verifier_log.to_string(); println!("{}", &s[s.len().saturating_sub(3000)..]); } } }
    }
    Ok(())
}
