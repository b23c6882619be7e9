//! The PROXY protocol v2 header that the backend writes first on every stream it
//! delivers to a dom0 service, so the service knows which guest is calling.
//!
//! The header says AF_UNIX/STREAM with empty (zeroed) addresses: the stream does
//! arrive on a unix socket, and there is no network address to give. (UNSPEC
//! would be shorter, but parsers disagree on whether TLVs may follow an UNSPEC
//! address block; with AF_UNIX their place is unambiguous.) Three TLVs in the
//! range the specification leaves for custom use carry the domain id, the domain
//! name and the service name. Encoding and parsing are done by the `ppp` crate;
//! this module adds our TLVs, bounds and validation.

use tokio::io::{AsyncRead, AsyncReadExt};

use crate::{Error, Result};

/// TLV type of the domain id (2 bytes, big-endian).
pub const TLV_DOMID: u8 = 0xE0;
/// TLV type of the domain name (UTF-8).
pub const TLV_DOMAIN_NAME: u8 = 0xE1;
/// TLV type of the service name (UTF-8).
pub const TLV_SERVICE: u8 = 0xE2;

/// The fixed part: signature, version/command, family, length.
pub const FIXED_LEN: usize = 16;
/// Longest variable part we accept. Ours is well under 300 bytes; anything longer
/// is not from our backend.
pub const MAX_BODY: usize = 1024;
/// Longest domain or service name.
pub const MAX_NAME: usize = 255;

const SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";

/// Who is calling: the guest and the service it asked for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Origin {
    /// The guest's domain id.
    pub domid: u16,
    /// The guest's domain name.
    pub domain: String,
    /// The service name the guest asked for.
    pub service: String,
}

fn builder() -> ppp::v2::Builder {
    ppp::v2::Builder::with_addresses(
        ppp::v2::Version::Two | ppp::v2::Command::Proxy,
        ppp::v2::Protocol::Stream,
        ppp::v2::Unix::new([0; 108], [0; 108]),
    )
}

fn check_name(what: &str, s: &str) -> Result<()> {
    if s.is_empty() || s.len() > MAX_NAME || s.chars().any(|c| c.is_control()) {
        return Err(Error::Protocol(format!(
            "PROXY v2 {what} must be 1 to {MAX_NAME} bytes without control characters"
        )));
    }
    Ok(())
}

/// Encodes the header for `o`.
pub fn encode(o: &Origin) -> Result<Vec<u8>> {
    check_name("domain name", &o.domain)?;
    check_name("service name", &o.service)?;
    let build = || -> std::io::Result<Vec<u8>> {
        builder()
            .write_tlv(TLV_DOMID, &o.domid.to_be_bytes())?
            .write_tlv(TLV_DOMAIN_NAME, o.domain.as_bytes())?
            .write_tlv(TLV_SERVICE, o.service.as_bytes())?
            .build()
    };
    build().map_err(|e| Error::Invalid(format!("PROXY v2 header: {e}")))
}

/// Length of the whole header whose first [`FIXED_LEN`] bytes are `fixed`, after
/// checking the signature, version and bound.
pub fn header_len(fixed: &[u8; FIXED_LEN]) -> Result<usize> {
    if fixed[..12] != SIGNATURE {
        return Err(Error::Protocol("no PROXY v2 signature".into()));
    }
    if fixed[12] >> 4 != 2 {
        return Err(Error::Protocol(format!(
            "PROXY protocol version {} (want 2)",
            fixed[12] >> 4
        )));
    }
    let body = usize::from(u16::from_be_bytes([fixed[14], fixed[15]]));
    if body > MAX_BODY {
        return Err(Error::Protocol(format!(
            "PROXY v2 header of {body} bytes (at most {MAX_BODY})"
        )));
    }
    Ok(FIXED_LEN + body)
}

/// Parses a complete header (exactly [`header_len`] bytes) into an [`Origin`].
pub fn parse(header: &[u8]) -> Result<Origin> {
    let h = ppp::v2::Header::try_from(header)
        .map_err(|e| Error::Protocol(format!("PROXY v2 header: {e}")))?;
    if h.command != ppp::v2::Command::Proxy {
        return Err(Error::Protocol(
            "PROXY v2 LOCAL command carries no origin".into(),
        ));
    }
    let (mut domid, mut domain, mut service) = (None, None, None);
    for tlv in h.tlvs() {
        let tlv = tlv.map_err(|e| Error::Protocol(format!("PROXY v2 TLV: {e}")))?;
        let text = || {
            std::str::from_utf8(&tlv.value)
                .map(str::to_owned)
                .map_err(|_| Error::Protocol("PROXY v2 name is not UTF-8".into()))
        };
        match tlv.kind {
            TLV_DOMID => {
                let v: [u8; 2] =
                    tlv.value.as_ref().try_into().map_err(|_| {
                        Error::Protocol("PROXY v2 domain id TLV is not 2 bytes".into())
                    })?;
                domid = Some(u16::from_be_bytes(v));
            }
            TLV_DOMAIN_NAME => domain = Some(text()?),
            TLV_SERVICE => service = Some(text()?),
            _ => {} // Unknown TLVs are skipped, as the specification asks.
        }
    }
    let missing = |what: &str| Error::Protocol(format!("PROXY v2 header has no {what}"));
    let o = Origin {
        domid: domid.ok_or_else(|| missing("domain id"))?,
        domain: domain.ok_or_else(|| missing("domain name"))?,
        service: service.ok_or_else(|| missing("service name"))?,
    };
    check_name("domain name", &o.domain)?;
    check_name("service name", &o.service)?;
    Ok(o)
}

/// Reads exactly one header from `r` (never a byte of what follows it).
pub async fn read<R: AsyncRead + Unpin>(r: &mut R) -> Result<Origin> {
    let mut fixed = [0u8; FIXED_LEN];
    r.read_exact(&mut fixed).await?;
    let len = header_len(&fixed)?;
    let mut buf = vec![0u8; len];
    buf[..FIXED_LEN].copy_from_slice(&fixed);
    r.read_exact(&mut buf[FIXED_LEN..]).await?;
    parse(&buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn origin() -> Origin {
        Origin {
            domid: 0x1234,
            domain: "vm1".into(),
            service: "vnc".into(),
        }
    }

    #[test]
    fn round_trip() {
        let h = encode(&origin()).unwrap();
        assert_eq!(&h[..12], &SIGNATURE);
        assert_eq!(h[12], 0x21, "version 2, PROXY");
        assert_eq!(h[13], 0x31, "AF_UNIX, STREAM");
        let fixed: [u8; FIXED_LEN] = h[..FIXED_LEN].try_into().unwrap();
        assert_eq!(header_len(&fixed).unwrap(), h.len());
        assert_eq!(parse(&h).unwrap(), origin());
    }

    #[tokio::test]
    async fn read_stops_at_the_header() {
        let mut bytes = encode(&origin()).unwrap();
        bytes.extend_from_slice(b"RFB 003.008\n");
        let mut r = &bytes[..];
        assert_eq!(read(&mut r).await.unwrap(), origin());
        assert_eq!(r, b"RFB 003.008\n");
    }

    #[test]
    fn unknown_tlvs_are_skipped() {
        let h = builder()
            .write_tlv(0xEE_u8, b"whatever")
            .unwrap()
            .write_tlv(TLV_DOMID, &7u16.to_be_bytes())
            .unwrap()
            .write_tlv(TLV_DOMAIN_NAME, b"g")
            .unwrap()
            .write_tlv(TLV_SERVICE, b"s")
            .unwrap()
            .build()
            .unwrap();
        assert_eq!(parse(&h).unwrap().domid, 7);
    }

    #[test]
    fn bad_headers_are_errors() {
        let good = encode(&origin()).unwrap();
        let mut bad_sig = good.clone();
        bad_sig[0] = b'X';
        assert!(header_len(&bad_sig[..FIXED_LEN].try_into().unwrap()).is_err());
        let mut too_long = good.clone();
        too_long[14..16].copy_from_slice(&2000u16.to_be_bytes());
        assert!(header_len(&too_long[..FIXED_LEN].try_into().unwrap()).is_err());
        assert!(parse(&good[..good.len() - 1]).is_err(), "truncated");
        let no_service = builder()
            .write_tlv(TLV_DOMID, &7u16.to_be_bytes())
            .unwrap()
            .write_tlv(TLV_DOMAIN_NAME, b"g")
            .unwrap()
            .build()
            .unwrap();
        assert!(parse(&no_service).is_err());
        let bad_id = encode(&origin())
            .map(|mut h| {
                // Make the domain id TLV 3 bytes long by lying in its length field.
                let at = FIXED_LEN + 216;
                h[at + 2] = 3;
                h
            })
            .unwrap();
        assert!(parse(&bad_id).is_err());
        assert!(encode(&Origin {
            domain: "a\nb".into(),
            ..origin()
        })
        .is_err());
    }
}
