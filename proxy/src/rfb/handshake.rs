//! The RFB handshake for both sides: version, security (None, VncAuth), SecurityResult,
//! ClientInit and ServerInit.

use des::cipher::{BlockEncrypt, KeyInit};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::error::{Error, Result};
use super::pixel::PixelFormat;
use super::wire::{finish, put_u16, put_u32, PResult, Rd, Stop};

/// Security type: no authentication.
pub const SEC_NONE: u8 = 1;
/// Security type: DES challenge-response.
pub const SEC_VNC_AUTH: u8 = 2;
/// Longest reason string we read from a peer.
pub const MAX_REASON: u32 = 4096;

/// The protocol versions we speak.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Version {
    /// 3.3: the server picks the security type.
    V3_3,
    /// 3.7: the client picks from a list.
    V3_7,
    /// 3.8: SecurityResult always, with a reason on failure.
    V3_8,
}

impl Version {
    /// The 12-byte ProtocolVersion message.
    pub fn wire(self) -> &'static [u8; 12] {
        match self {
            Version::V3_3 => b"RFB 003.003\n",
            Version::V3_7 => b"RFB 003.007\n",
            Version::V3_8 => b"RFB 003.008\n",
        }
    }

    /// Reads a ProtocolVersion. Major 3 only; minors the spec leaves unknown map down
    /// to 3.3 (below 7) or up to 3.8 (above 8), as deployed servers do.
    pub fn parse(b: &[u8; 12]) -> Result<Version> {
        let bad = || Error::Version(String::from_utf8_lossy(b).escape_debug().to_string());
        if &b[..4] != b"RFB " || b[7] != b'.' || b[11] != b'\n' {
            return Err(bad());
        }
        let num = |s: &[u8]| -> Option<u32> {
            s.iter().try_fold(0u32, |a, &c| {
                c.is_ascii_digit().then(|| a * 10 + u32::from(c - b'0'))
            })
        };
        let (major, minor) = (
            num(&b[4..7]).ok_or_else(bad)?,
            num(&b[8..11]).ok_or_else(bad)?,
        );
        if major != 3 {
            return Err(bad());
        }
        Ok(match minor {
            0..=2 => return Err(bad()),
            3..=6 => Version::V3_3,
            7 => Version::V3_7,
            _ => Version::V3_8,
        })
    }
}

/// ServerInit: the framebuffer's size and format and the desktop's name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServerInit {
    /// Width.
    pub width: u16,
    /// Height.
    pub height: u16,
    /// The server's natural pixel format.
    pub pixel_format: PixelFormat,
    /// Desktop name.
    pub name: String,
}

impl ServerInit {
    /// Appends the wire form.
    pub fn write(&self, out: &mut Vec<u8>) {
        put_u16(out, self.width);
        put_u16(out, self.height);
        out.extend_from_slice(&self.pixel_format.to_wire());
        put_u32(out, self.name.len() as u32);
        out.extend_from_slice(self.name.as_bytes());
    }

    fn parse_inner(r: &mut Rd<'_>, max_name: u32) -> PResult<ServerInit> {
        let width = r.u16()?;
        let height = r.u16()?;
        let pf: &[u8; 16] = r.bytes(16)?.try_into().expect("16 bytes");
        let pixel_format = PixelFormat::from_wire(pf)?;
        let len = r.u32()?;
        if len > max_name {
            return Err(Stop::Bad(Error::TooLarge {
                what: "desktop name",
                len: len.into(),
                limit: max_name.into(),
            }));
        }
        let name = String::from_utf8_lossy(r.bytes(len as usize)?).into_owned();
        Ok(ServerInit {
            width,
            height,
            pixel_format,
            name,
        })
    }

    /// Parses ServerInit; `Ok(None)` means more bytes are needed.
    pub fn parse(buf: &[u8], max_name: u32) -> Result<Option<(ServerInit, usize)>> {
        let mut r = Rd::new(buf);
        finish(Self::parse_inner(&mut r, max_name).map(|s| (s, r.pos())))
    }
}

/// The VncAuth response: the challenge DES-encrypted with the password (first 8 bytes,
/// zero-padded) as key, each key byte bit-reversed as RFB defines.
pub fn vnc_auth_response(password: &[u8], challenge: &[u8; 16]) -> [u8; 16] {
    let mut key = [0u8; 8];
    for (k, p) in key.iter_mut().zip(password) {
        *k = p.reverse_bits();
    }
    let cipher = des::Des::new(&key.into());
    let mut out = *challenge;
    for block in out.chunks_exact_mut(8) {
        cipher.encrypt_block(block.into());
    }
    out
}

fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn eof(e: std::io::Error) -> Error {
    if e.kind() == std::io::ErrorKind::UnexpectedEof {
        Error::Closed
    } else {
        Error::Io(e)
    }
}

async fn read_array<S: AsyncRead + Unpin, const N: usize>(s: &mut S) -> Result<[u8; N]> {
    let mut b = [0u8; N];
    s.read_exact(&mut b).await.map_err(eof)?;
    Ok(b)
}

async fn read_reason<S: AsyncRead + Unpin>(s: &mut S) -> Result<String> {
    let len = u32::from_be_bytes(read_array(s).await?);
    if len > MAX_REASON {
        return Err(Error::TooLarge {
            what: "reason string",
            len: len.into(),
            limit: MAX_REASON.into(),
        });
    }
    let mut v = vec![0u8; len as usize];
    s.read_exact(&mut v).await.map_err(eof)?;
    Ok(String::from_utf8_lossy(&v).into_owned())
}

/// What our server side needs for a handshake.
#[derive(Clone, Debug, Default)]
pub struct ServerConfig {
    /// VncAuth with this password when set; otherwise security type None.
    pub password: Option<Vec<u8>>,
}

/// What a viewer told us in the handshake.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ClientHello {
    /// The version agreed.
    pub version: Version,
    /// The viewer's ClientInit shared flag.
    pub shared: bool,
}

/// Runs the server side up to and including ServerInit.
pub async fn server_handshake<S: AsyncRead + AsyncWrite + Unpin>(
    s: &mut S,
    cfg: &ServerConfig,
    init: &ServerInit,
) -> Result<ClientHello> {
    s.write_all(Version::V3_8.wire()).await?;
    let version = Version::parse(&read_array(s).await?)?;
    let offered = if cfg.password.is_some() {
        SEC_VNC_AUTH
    } else {
        SEC_NONE
    };
    let chosen = if version == Version::V3_3 {
        s.write_all(&u32::from(offered).to_be_bytes()).await?;
        offered
    } else {
        s.write_all(&[1, offered]).await?;
        let [c] = read_array(s).await?;
        if c != offered {
            if version == Version::V3_8 {
                fail(s, "security type not offered").await?;
            }
            return Err(Error::NoSecurity);
        }
        c
    };
    if chosen == SEC_VNC_AUTH {
        let mut challenge = [0u8; 16];
        getrandom::fill(&mut challenge)
            .map_err(|e| Error::Io(std::io::Error::other(e.to_string())))?;
        s.write_all(&challenge).await?;
        let resp: [u8; 16] = read_array(s).await?;
        let want = vnc_auth_response(cfg.password.as_deref().unwrap_or_default(), &challenge);
        if !ct_eq(&resp, &want) {
            if version == Version::V3_8 {
                fail(s, "authentication failed").await?;
            } else {
                s.write_all(&1u32.to_be_bytes()).await?;
            }
            return Err(Error::AuthFailed("wrong VncAuth response".into()));
        }
    }
    if chosen == SEC_VNC_AUTH || version == Version::V3_8 {
        s.write_all(&0u32.to_be_bytes()).await?;
    }
    let [shared] = read_array(s).await?;
    let mut out = Vec::new();
    init.write(&mut out);
    s.write_all(&out).await?;
    s.flush().await?;
    Ok(ClientHello {
        version,
        shared: shared != 0,
    })
}

async fn fail<S: AsyncWrite + Unpin>(s: &mut S, reason: &str) -> Result<()> {
    let mut out = Vec::new();
    put_u32(&mut out, 1);
    put_u32(&mut out, reason.len() as u32);
    out.extend_from_slice(reason.as_bytes());
    s.write_all(&out).await?;
    s.flush().await?;
    Ok(())
}

/// What our client side needs for a handshake.
#[derive(Clone, Debug)]
pub struct ClientConfig {
    /// Used if the server asks for VncAuth.
    pub password: Option<Vec<u8>>,
    /// The ClientInit shared flag.
    pub shared: bool,
    /// Longest desktop name accepted.
    pub max_name: u32,
}

impl Default for ClientConfig {
    fn default() -> Self {
        ClientConfig {
            password: None,
            shared: true,
            max_name: 4096,
        }
    }
}

/// Runs the client side up to and including ServerInit.
pub async fn client_handshake<S: AsyncRead + AsyncWrite + Unpin>(
    s: &mut S,
    cfg: &ClientConfig,
) -> Result<(Version, ServerInit)> {
    let version = Version::parse(&read_array(s).await?)?.min(Version::V3_8);
    s.write_all(version.wire()).await?;
    let chosen = if version == Version::V3_3 {
        match u32::from_be_bytes(read_array(s).await?) {
            0 => return Err(Error::AuthFailed(read_reason(s).await?)),
            1 => SEC_NONE,
            2 if cfg.password.is_some() => SEC_VNC_AUTH,
            _ => return Err(Error::NoSecurity),
        }
    } else {
        let [n] = read_array(s).await?;
        if n == 0 {
            return Err(Error::AuthFailed(read_reason(s).await?));
        }
        let mut types = vec![0u8; n.into()];
        s.read_exact(&mut types).await.map_err(eof)?;
        let c = if cfg.password.is_some() && types.contains(&SEC_VNC_AUTH) {
            SEC_VNC_AUTH
        } else if types.contains(&SEC_NONE) {
            SEC_NONE
        } else {
            return Err(Error::NoSecurity);
        };
        s.write_all(&[c]).await?;
        c
    };
    if chosen == SEC_VNC_AUTH {
        let challenge: [u8; 16] = read_array(s).await?;
        let resp = vnc_auth_response(cfg.password.as_deref().unwrap_or_default(), &challenge);
        s.write_all(&resp).await?;
    }
    if (chosen == SEC_VNC_AUTH || version == Version::V3_8)
        && u32::from_be_bytes(read_array(s).await?) != 0
    {
        let reason = if version == Version::V3_8 {
            read_reason(s).await?
        } else {
            "security handshake failed".into()
        };
        return Err(Error::AuthFailed(reason));
    }
    s.write_all(&[u8::from(cfg.shared)]).await?;
    s.flush().await?;
    let mut buf = Vec::new();
    loop {
        if let Some((init, _)) = ServerInit::parse(&buf, cfg.max_name)? {
            return Ok((version, init));
        }
        let mut chunk = [0u8; 256];
        let n = s.read(&mut chunk[..need_for_init(&buf)]).await?;
        if n == 0 {
            return Err(Error::Closed);
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// How many more bytes ServerInit can take without reading past its end.
fn need_for_init(buf: &[u8]) -> usize {
    let total = if buf.len() >= 24 {
        24 + u32::from_be_bytes([buf[20], buf[21], buf[22], buf[23]]) as usize
    } else {
        24
    };
    (total - buf.len()).clamp(1, 256)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions() {
        assert_eq!(Version::parse(b"RFB 003.008\n").unwrap(), Version::V3_8);
        assert_eq!(Version::parse(b"RFB 003.007\n").unwrap(), Version::V3_7);
        assert_eq!(Version::parse(b"RFB 003.003\n").unwrap(), Version::V3_3);
        assert_eq!(Version::parse(b"RFB 003.005\n").unwrap(), Version::V3_3);
        assert_eq!(Version::parse(b"RFB 003.889\n").unwrap(), Version::V3_8);
        assert!(Version::parse(b"RFB 004.000\n").is_err());
        assert!(Version::parse(b"RFB 003.00x\n").is_err());
        assert!(Version::parse(b"HTTP/1.1 200").is_err());
    }

    #[test]
    fn vnc_auth_known_answer() {
        // With an all-zero password the bit reversal is invisible, so this is plain
        // DES with a zero key on a zero block: 8CA64DE9C1B123A7 (a standard test vector).
        let r = vnc_auth_response(b"", &[0u8; 16]);
        assert_eq!(r[..8], [0x8c, 0xa6, 0x4d, 0xe9, 0xc1, 0xb1, 0x23, 0xa7]);
        assert_eq!(r[..8], r[8..]);
        // Bit reversal matters: 0x01 reversed is 0x80, so these keys differ in DES's
        // parity bit only for one of them.
        assert_ne!(
            vnc_auth_response(b"\x02", &[7; 16]),
            vnc_auth_response(b"\x40", &[7; 16])
        );
        // Only the first 8 bytes of the password count.
        assert_eq!(
            vnc_auth_response(b"password", &[3; 16]),
            vnc_auth_response(b"password-and-more", &[3; 16])
        );
    }

    #[test]
    fn server_init_round_trip_and_limits() {
        let si = ServerInit {
            width: 1024,
            height: 768,
            pixel_format: PixelFormat::rgb888(),
            name: "desk".into(),
        };
        let mut b = Vec::new();
        si.write(&mut b);
        for cut in 0..b.len() {
            assert!(ServerInit::parse(&b[..cut], 100).unwrap().is_none());
        }
        assert_eq!(ServerInit::parse(&b, 100).unwrap().unwrap(), (si, b.len()));
        assert!(matches!(
            ServerInit::parse(&b, 2),
            Err(Error::TooLarge { .. })
        ));
    }

    async fn pair(
        scfg: ServerConfig,
        ccfg: ClientConfig,
    ) -> (Result<ClientHello>, Result<(Version, ServerInit)>) {
        let (mut a, mut b) = tokio::io::duplex(4096);
        let init = ServerInit {
            width: 640,
            height: 480,
            pixel_format: PixelFormat::rgb888(),
            name: "test".into(),
        };
        let srv = async {
            let r = server_handshake(&mut a, &scfg, &init).await;
            drop(a);
            r
        };
        let cli = async {
            let r = client_handshake(&mut b, &ccfg).await;
            drop(b);
            r
        };
        tokio::join!(srv, cli)
    }

    #[tokio::test]
    async fn none_handshake() {
        let (s, c) = pair(ServerConfig::default(), ClientConfig::default()).await;
        assert_eq!(
            s.unwrap(),
            ClientHello {
                version: Version::V3_8,
                shared: true
            }
        );
        let (v, init) = c.unwrap();
        assert_eq!(v, Version::V3_8);
        assert_eq!(
            (init.width, init.height, init.name.as_str()),
            (640, 480, "test")
        );
    }

    #[tokio::test]
    async fn vnc_auth_good_and_bad() {
        let scfg = ServerConfig {
            password: Some(b"secret".to_vec()),
        };
        let good = ClientConfig {
            password: Some(b"secret".to_vec()),
            shared: false,
            ..Default::default()
        };
        let (s, c) = pair(scfg.clone(), good).await;
        assert!(!s.unwrap().shared);
        assert!(c.is_ok());
        let bad = ClientConfig {
            password: Some(b"wrong".to_vec()),
            ..Default::default()
        };
        let (s, c) = pair(scfg.clone(), bad).await;
        assert!(matches!(s, Err(Error::AuthFailed(_))));
        match c {
            Err(Error::AuthFailed(reason)) => assert_eq!(reason, "authentication failed"),
            other => panic!("{other:?}"),
        }
        let (s, c) = pair(scfg, ClientConfig::default()).await;
        assert!(s.is_err());
        assert!(matches!(c, Err(Error::NoSecurity)));
    }

    /// Speaks the viewer side of 3.3 and 3.7 by hand against our server.
    #[tokio::test]
    async fn older_versions_on_the_server() {
        for (ver, pw) in [
            (b"RFB 003.003\n", false),
            (b"RFB 003.007\n", false),
            (b"RFB 003.007\n", true),
        ] {
            let (mut a, mut b) = tokio::io::duplex(4096);
            let scfg = ServerConfig {
                password: pw.then(|| b"pw".to_vec()),
            };
            let init = ServerInit {
                width: 1,
                height: 1,
                pixel_format: PixelFormat::rgb565(),
                name: String::new(),
            };
            let srv = async { server_handshake(&mut a, &scfg, &init).await };
            let cli = async {
                let v: [u8; 12] = read_array(&mut b).await.unwrap();
                assert_eq!(&v, b"RFB 003.008\n");
                b.write_all(ver).await.unwrap();
                let sec = if ver == b"RFB 003.003\n" {
                    u32::from_be_bytes(read_array(&mut b).await.unwrap()) as u8
                } else {
                    let [n, t]: [u8; 2] = read_array(&mut b).await.unwrap();
                    assert_eq!(n, 1);
                    b.write_all(&[t]).await.unwrap();
                    t
                };
                if sec == SEC_VNC_AUTH {
                    let ch: [u8; 16] = read_array(&mut b).await.unwrap();
                    b.write_all(&vnc_auth_response(b"pw", &ch)).await.unwrap();
                    let ok: [u8; 4] = read_array(&mut b).await.unwrap();
                    assert_eq!(ok, [0; 4]);
                }
                b.write_all(&[1]).await.unwrap();
                let si: [u8; 24] = read_array(&mut b).await.unwrap();
                assert_eq!(&si[4..20], &PixelFormat::rgb565().to_wire());
            };
            let (s, ()) = tokio::join!(srv, cli);
            assert!(s.unwrap().shared);
        }
    }
}
