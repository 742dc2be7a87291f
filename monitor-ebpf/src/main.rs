//! apimon's kernel side: syscall tracepoints follow TCP connections and forward the bytes of
//! HTTP ones; OpenSSL uprobes forward TLS plaintext tied to its socket. No kprobes.
#![no_std]
#![no_main]
#![feature(asm_experimental_arch)]

mod helpers;
mod io;
mod maps;
mod openssl;
mod process;
mod sockets;

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // Unreachable in a verified program: any path that could panic would fail to load.
    loop {}
}

/// bpf_probe_read_user is GPL-only.
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
