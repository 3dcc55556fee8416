//! The thin IO shell of the [`Client`]: one [`service`] call moves bytes between the client and an
//! embedded-io link, and opens or closes the link when the client asks.

use embedded_hal::digital::OutputPin;
use embedded_io::{Read, ReadReady, Write};
use embedded_storage::nor_flash::NorFlash;

use super::{Client, Request};
use crate::device::Device;

/// A byte link to the broker that can be (re)opened: a TCP socket, or the UART of a module in
/// transparent serial-to-TCP mode (whose `open` and `close` may do nothing, or drive AT commands).
pub trait Link: Read + ReadReady + Write {
    /// Opens the link (connects to the broker).
    fn open(&mut self) -> Result<(), Self::Error>;
    /// Closes the link.
    fn close(&mut self);
}

/// What one [`service`] call did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Serviced {
    /// Bytes written to the link.
    pub written: usize,
    /// Bytes read from the link.
    pub read: usize,
}

/// One turn of the loop: poll the client, carry out its request, send what it queued, feed it
/// what the link has ready (without blocking). A link error closes the link and makes the client
/// back off before the next attempt.
pub fn service<
    L: Link,
    S: NorFlash,
    R: OutputPin,
    const CAP: usize,
    const TX: usize,
    const RX: usize,
>(
    client: &mut Client<TX, RX>,
    link: &mut L,
    now: u64,
    dev: &mut Device<S, R, CAP>,
) -> Serviced {
    let mut done = Serviced::default();
    let req = client.poll(now, dev);
    handle(client, link, now, dev, req);
    while !client.transmit().is_empty() {
        match link.write(client.transmit()) {
            Ok(0) | Err(_) => {
                link.close();
                client.closed(now, dev);
                return done;
            }
            Ok(n) => {
                done.written += n;
                client.transmitted(n);
            }
        }
    }
    if link.flush().is_err() {
        link.close();
        client.closed(now, dev);
        return done;
    }
    let mut buf = [0u8; 256];
    loop {
        match link.read_ready() {
            Ok(true) => {}
            Ok(false) => return done,
            Err(_) => break,
        }
        match link.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                done.read += n;
                let req = client.received(now, &buf[..n], dev);
                if req.is_some() {
                    handle(client, link, now, dev, req);
                    return done;
                }
            }
        }
    }
    // End of stream or error: the link is gone.
    link.close();
    client.closed(now, dev);
    done
}

fn handle<
    L: Link,
    S: NorFlash,
    R: OutputPin,
    const CAP: usize,
    const TX: usize,
    const RX: usize,
>(
    client: &mut Client<TX, RX>,
    link: &mut L,
    now: u64,
    dev: &mut Device<S, R, CAP>,
    req: Option<Request>,
) {
    match req {
        Some(Request::Open) => match link.open() {
            Ok(()) => client.opened(now, dev),
            Err(_) => client.closed(now, dev),
        },
        Some(Request::Close) => {
            link.close();
            client.closed(now, dev);
        }
        None => {}
    }
}
