//! The fabmeter MCU image for QEMU's `lm3s6965evb` (TI Stellaris LM3S6965, Cortex-M3).
//!
//! - UART0 (0x4000C000, polled) is the link to the broker: the transparent serial-to-TCP mode of a
//!   UART Wi-Fi/Ethernet module, which QEMU reproduces with `-serial tcp:127.0.0.1:PORT`.
//! - SysTick gives the millisecond uptime.
//! - The flash is a 28 KiB RAM-backed NOR flash (`storage::RamFlash`): QEMU does not emulate the
//!   LM3S6965 flash controller, so journal and config survive a link drop but not a reset here.
//! - The relay is the EVB's status LED (PF0).
//! - With the `scenario` feature a scripted run-signal and badge sequence drives the device
//!   once its config arrived; without it the image only connects, births and obeys the broker.
//! - With the `confirm` feature events stay journaled until the collector confirms them on `ack`.
//!
//! See docs/FIRMWARE.md for the real board, the pin map and the QEMU command line. On the host this
//! file builds to a stub `main` so that `cargo test` and `cargo clippy` of the workspace work.
#![cfg_attr(target_os = "none", no_std)]
#![cfg_attr(target_os = "none", no_main)]

#[cfg(not(target_os = "none"))]
fn main() {
    eprintln!(
        "fabmeter-qemu is the MCU image: build it with \
         `cargo build --release -p fabmeter-firmware --target thumbv7m-none-eabi` (docs/FIRMWARE.md)"
    );
}

#[cfg(target_os = "none")]
mod board {
    use core::sync::atomic::{AtomicU32, Ordering};

    use cortex_m::peripheral::syst::SystClkSource;
    use cortex_m_rt::{entry, exception};
    use embedded_io::{ErrorType, Read, ReadReady, Write};
    use fabmeter_firmware::device::{Action, Device, DeviceInfo};
    use fabmeter_firmware::mqtt::shell::{service, Link};
    use fabmeter_firmware::mqtt::{Client, Settings};
    use fabmeter_firmware::storage::RamFlash;
    use fabmeter_protocol::message::Capability;
    use fabmeter_protocol::sig::EventSigner;
    use fabmeter_protocol::{BadgeKey, DeviceKey, Id};
    #[cfg(not(feature = "semihosting"))]
    use panic_halt as _;

    #[cfg(feature = "semihosting")]
    #[panic_handler]
    fn panic(info: &core::panic::PanicInfo) -> ! {
        cortex_m_semihosting::hprintln!("fabmeter-qemu: {}", info);
        loop {}
    }

    /// Site and machine of this image (a real device reads them from its provisioning data).
    pub const SITE: &str = "lab";
    /// The machine id.
    pub const MACHINE: &str = "laser-1";
    /// The site key: the protocol's test key 00 01 .. 1f.
    const SITE_KEY: [u8; 32] = [
        0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24,
        25, 26, 27, 28, 29, 30, 31,
    ];

    /// The device key this image signs its events with (docs/PROTOCOL.md "Signatures"): bytes
    /// 0x20 to 0x3f. A real device reads its key from its provisioning data.
    pub const DEVICE_KEY: [u8; 32] = [
        0x20, 0x21, 0x22, 0x23, 0x24, 0x25, 0x26, 0x27, 0x28, 0x29, 0x2a, 0x2b, 0x2c, 0x2d, 0x2e,
        0x2f, 0x30, 0x31, 0x32, 0x33, 0x34, 0x35, 0x36, 0x37, 0x38, 0x39, 0x3a, 0x3b, 0x3c, 0x3d,
        0x3e, 0x3f,
    ];

    /// The box id of this image (docs/PROTOCOL.md `box`). The QEMU flash is RAM, so every run is
    /// a first start; a real board draws the id at its first start from its TRNG (or its chip's
    /// unique id mixed with ADC noise) and the device keeps it with its boot counter.
    const BOX_ID: u32 = 0x0b0c_5eed;

    /// Core clock as QEMU models the LM3S6965 after reset (measured: see docs/FIRMWARE.md).
    const CORE_HZ: u32 = 12_000_000;

    /// 28 KiB of 2 KiB sectors: two 6 KiB config slots and 8 journal sectors, the least that
    /// holds a journal of [`JOURNAL_CAP`] events of the largest size with room to compact.
    type Flash = RamFlash<{ 28 * 1024 }, 2048>;
    /// Journal capacity of this image (events awaiting a PUBACK).
    const JOURNAL_CAP: usize = 16;
    type Dev = Device<&'static mut Flash, Led, JOURNAL_CAP>;

    static MILLIS: AtomicU32 = AtomicU32::new(0);

    #[exception]
    fn SysTick() {
        MILLIS.fetch_add(1, Ordering::Relaxed);
    }

    /// Uptime in ms, widened to 64 bits by the caller's `Clock`.
    struct Clock {
        last: u32,
        high: u64,
    }

    impl Clock {
        fn now(&mut self) -> u64 {
            let m = MILLIS.load(Ordering::Relaxed);
            if m < self.last {
                self.high += 1 << 32;
            }
            self.last = m;
            self.high | u64::from(m)
        }
    }

    fn reg(addr: usize) -> *mut u32 {
        addr as *mut u32
    }

    /// UART0 of the LM3S6965, polled.
    struct Uart0;

    const UART0: usize = 0x4000_C000;
    const UART_DR: usize = UART0;
    const UART_FR: usize = UART0 + 0x18;
    const UART_CTL: usize = UART0 + 0x30;
    const FR_RXFE: u32 = 1 << 4;
    const FR_TXFF: u32 = 1 << 5;

    impl Uart0 {
        fn init() -> Self {
            // SAFETY: fixed MMIO registers of the LM3S6965 (RCGC1 UART0 clock, UARTCTL enable);
            // single-threaded, before any other use.
            unsafe {
                let rcgc1 = reg(0x400F_E104);
                rcgc1.write_volatile(rcgc1.read_volatile() | 1);
                reg(UART_CTL).write_volatile(0x301); // UARTEN | TXE | RXE
            }
            Uart0
        }
        fn flags() -> u32 {
            // SAFETY: read of the UART0 flag register.
            unsafe { reg(UART_FR).read_volatile() }
        }
    }

    impl ErrorType for Uart0 {
        type Error = core::convert::Infallible;
    }

    impl Read for Uart0 {
        fn read(&mut self, buf: &mut [u8]) -> Result<usize, Self::Error> {
            let mut n = 0;
            while n < buf.len() {
                if Self::flags() & FR_RXFE != 0 {
                    if n > 0 {
                        break;
                    }
                    continue; // blocking until at least one byte, as embedded-io asks
                }
                // SAFETY: read of the UART0 data register (pops the RX FIFO).
                buf[n] = unsafe { reg(UART_DR).read_volatile() } as u8;
                n += 1;
            }
            Ok(n)
        }
    }

    impl ReadReady for Uart0 {
        fn read_ready(&mut self) -> Result<bool, Self::Error> {
            Ok(Self::flags() & FR_RXFE == 0)
        }
    }

    impl Write for Uart0 {
        fn write(&mut self, buf: &[u8]) -> Result<usize, Self::Error> {
            for &b in buf {
                while Self::flags() & FR_TXFF != 0 {}
                // SAFETY: write of the UART0 data register (pushes the TX FIFO).
                unsafe { reg(UART_DR).write_volatile(u32::from(b)) };
            }
            Ok(buf.len())
        }
        fn flush(&mut self) -> Result<(), Self::Error> {
            Ok(())
        }
    }

    /// Transparent mode: the module (here QEMU's chardev, `reconnect=1`) keeps the TCP connection
    /// up by itself; the firmware only ever re-sends CONNECT.
    impl Link for Uart0 {
        fn open(&mut self) -> Result<(), Self::Error> {
            // Drop stale bytes of an earlier connection.
            while Self::flags() & FR_RXFE == 0 {
                // SAFETY: read of the UART0 data register.
                let _ = unsafe { reg(UART_DR).read_volatile() };
            }
            Ok(())
        }
        fn close(&mut self) {}
    }

    /// The relay output: the EVB status LED on PF0.
    struct Led;

    const GPIOF: usize = 0x4002_5000;

    impl Led {
        fn init() -> Self {
            // SAFETY: RCGC2 GPIOF clock, GPIOF DIR and DEN for pin 0: fixed MMIO of the LM3S6965.
            unsafe {
                let rcgc2 = reg(0x400F_E108);
                rcgc2.write_volatile(rcgc2.read_volatile() | (1 << 5));
                reg(GPIOF + 0x400).write_volatile(1);
                reg(GPIOF + 0x51C).write_volatile(1);
            }
            Led
        }
        fn set(&mut self, on: bool) {
            // SAFETY: masked GPIODATA write of pin 0 only (address bit 2 selects PF0).
            unsafe { reg(GPIOF + (1 << 2)).write_volatile(u32::from(on)) };
        }
    }

    impl embedded_hal::digital::ErrorType for Led {
        type Error = core::convert::Infallible;
    }

    impl embedded_hal::digital::OutputPin for Led {
        fn set_low(&mut self) -> Result<(), Self::Error> {
            self.set(false);
            Ok(())
        }
        fn set_high(&mut self) -> Result<(), Self::Error> {
            self.set(true);
            Ok(())
        }
    }

    macro_rules! log {
        ($($t:tt)*) => {
            #[cfg(feature = "semihosting")]
            cortex_m_semihosting::hprintln!($($t)*);
        };
    }

    #[entry]
    fn main() -> ! {
        log!("fabmeter-qemu: reset");
        let mut cp = cortex_m::Peripherals::take().unwrap_or_else(|| loop {});
        cp.SYST.set_clock_source(SystClkSource::Core);
        cp.SYST.set_reload(CORE_HZ / 1000 - 1);
        cp.SYST.clear_current();
        cp.SYST.enable_counter();
        cp.SYST.enable_interrupt();
        let mut clock = Clock { last: 0, high: 0 };

        // A const-initialised static, not `singleton!`: that builds the 28 KiB value on the stack
        // first, which overflows it in the size-optimised build. The price is 28 KiB of `.data`
        // (erased-flash bytes), which only this QEMU stand-in has; a real board uses its flash.
        static mut FLASH: Flash = Flash::new();
        // SAFETY: `main` runs once and this is the only reference ever taken to FLASH.
        let flash: &'static mut Flash = unsafe { &mut *core::ptr::addr_of_mut!(FLASH) };
        log!("fabmeter-qemu: flash ready");
        let info = DeviceInfo {
            fw: env!("CARGO_PKG_VERSION"),
            caps: &[Capability::RunSignal, Capability::Badge, Capability::Relay],
        };
        let dev: &'static mut Dev = match Dev::start(
            flash,
            Led::init(),
            BadgeKey::new(SITE_KEY),
            info,
            clock.now(),
        ) {
            Ok(d) => cortex_m::singleton!(DEVICE: Dev = d).unwrap_or_else(|| loop {}),
            Err(_) => loop {},
        };
        let (Ok(site), Ok(machine)) = (Id::new(SITE), Id::new(MACHINE)) else {
            loop {}
        };
        dev.set_event_key(Some(EventSigner::new(
            DeviceKey::new(DEVICE_KEY),
            &site,
            &machine,
        )));
        if dev.box_id().is_none() {
            dev.set_box_id(BOX_ID);
        }
        // With the `confirm` feature an event leaves the journal only when the collector
        // confirms it (docs/PROTOCOL.md "ack").
        dev.set_confirmations(cfg!(feature = "confirm"));
        let mut settings = Settings::new(site, machine);
        settings.keep_alive_s = 5;
        settings.ack_timeout_ms = 3000;
        settings.backoff_min_ms = 200;
        settings.backoff_max_ms = 2000;
        let client: &'static mut Client =
            cortex_m::singleton!(CLIENT: Client = Client::new(settings)).unwrap_or_else(|| loop {});
        let mut uart = Uart0::init();
        log!(
            "fabmeter-qemu boot {} (device {} B, client {} B, flash {} B)",
            dev.boot(),
            core::mem::size_of::<Dev>(),
            core::mem::size_of::<Client>(),
            core::mem::size_of::<Flash>()
        );
        #[cfg(feature = "scenario")]
        let mut script = scenario::Script::new();
        let mut connected = false;
        loop {
            let now = clock.now();
            dev.tick(now);
            #[cfg(feature = "scenario")]
            script.step(now, dev);
            let io = service(client, &mut uart, now, dev);
            if client.is_connected() != connected {
                connected = client.is_connected();
                log!(
                    "t={} connected={} {:?}",
                    now,
                    connected,
                    client.last_failure()
                );
            }
            if let Some(Action::Reboot) = dev.take_action() {
                cortex_m::peripheral::SCB::sys_reset();
            }
            if io.read == 0 && io.written == 0 {
                // Sleep until the next SysTick (1 ms): the UART FIFO holds 16 bytes, QEMU keeps
                // the rest in its socket.
                cortex_m::asm::wfi();
            }
        }
    }

    /// The scripted machine session of the QEMU end-to-end test.
    #[cfg(feature = "scenario")]
    mod scenario {
        use super::Dev;

        /// Alice's card: hashes to `ba279e0c1e5c2464` with the test key.
        const ALICE: [u8; 4] = [0x04, 0xa1, 0xb2, 0xc3];

        /// (ms after the config arrived and the journal emptied, step).
        const STEPS: [(u64, Step); 5] = [
            (0, Step::Run(false)),
            (1000, Step::Badge),
            (1000, Step::Run(true)),
            (6000, Step::Run(false)),
            (7000, Step::Badge),
        ];

        #[derive(Clone, Copy)]
        enum Step {
            Run(bool),
            Badge,
        }

        pub struct Script {
            start: Option<u64>,
            next: usize,
        }

        impl Script {
            pub fn new() -> Self {
                Script {
                    start: None,
                    next: 0,
                }
            }

            pub fn step(&mut self, now: u64, dev: &mut Dev) {
                let start = match self.start {
                    Some(s) => s,
                    None if dev.config().is_some() && dev.journal().is_empty() => {
                        self.start = Some(now);
                        now
                    }
                    None => return,
                };
                while let Some(&(at, step)) = STEPS.get(self.next) {
                    if now < start + at {
                        return;
                    }
                    let t = start + at;
                    match step {
                        Step::Run(high) => dev.on_run_signal(t, high),
                        Step::Badge => dev.on_badge(t, &ALICE),
                    }
                    log!("t={} scenario step {}", now, self.next);
                    self.next += 1;
                }
            }
        }
    }
}
