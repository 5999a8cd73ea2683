//! Length-prefixed framing for the manager ⇄ worker pipes: a little-endian `u32` byte count,
//! then one MessagePack message.

use std::io::{self, Read, Write};

/// Writes one frame and flushes it.
pub fn write_frame(out: &mut impl Write, payload: &[u8]) -> io::Result<()> {
    let len = u32::try_from(payload.len())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "frame over 4 GiB"))?;
    out.write_all(&len.to_le_bytes())?;
    out.write_all(payload)?;
    out.flush()
}

/// Reads one frame; `Ok(None)` at a clean end of stream. Frames over `limit` are an error.
pub fn read_frame(input: &mut impl Read, limit: usize) -> io::Result<Option<Vec<u8>>> {
    let mut header = [0u8; 4];
    match input.read_exact(&mut header) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let len = u32::from_le_bytes(header) as usize;
    if len > limit {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("frame of {len} bytes exceeds the limit of {limit} bytes"),
        ));
    }
    let mut payload = vec![0u8; len];
    input.read_exact(&mut payload)?;
    Ok(Some(payload))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip_and_end_cleanly() {
        let mut buf = Vec::new();
        write_frame(&mut buf, b"abc").unwrap();
        write_frame(&mut buf, b"").unwrap();
        let mut input = &buf[..];
        assert_eq!(read_frame(&mut input, 16).unwrap().unwrap(), b"abc");
        assert_eq!(read_frame(&mut input, 16).unwrap().unwrap(), b"");
        assert!(read_frame(&mut input, 16).unwrap().is_none());
    }

    #[test]
    fn oversize_frame_is_an_error() {
        let mut buf = Vec::new();
        write_frame(&mut buf, &[0; 32]).unwrap();
        assert!(read_frame(&mut &buf[..], 16).is_err());
    }
}
