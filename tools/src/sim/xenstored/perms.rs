//! Node permissions as xenstored has them: a list of `{access, domid}` entries
//! where the first names the owner and the access everyone else gets, and the
//! rest grant specific domains specific access.

use super::wire::Errno;

/// Read access bit.
pub const READ: u8 = 1;
/// Write access bit.
pub const WRITE: u8 = 2;
/// Owner bit: the owner (and a privileged domain) may change permissions.
pub const OWNER: u8 = 4;

/// One permission entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Perm {
    pub domid: u32,
    /// `READ | WRITE` subset.
    pub access: u8,
    /// Set when the domain did not exist when granted, or has died since: the
    /// entry is kept for GET_PERMS but grants nothing (so a recycled domid
    /// does not inherit it).
    pub ignore: bool,
}

/// A node's permission list; never empty.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Perms(Vec<Perm>);

impl Perms {
    /// Owner `owner`, everybody else gets `access`.
    pub fn owned(owner: u32, access: u8) -> Self {
        Perms(vec![Perm {
            domid: owner,
            access,
            ignore: false,
        }])
    }

    /// Adds an entry granting `access` to `domid`.
    pub fn with(mut self, domid: u32, access: u8) -> Self {
        self.0.push(Perm {
            domid,
            access,
            ignore: false,
        });
        self
    }

    /// The owning domain.
    pub fn owner(&self) -> u32 {
        self.0[0].domid
    }

    /// Makes `domid` the owner, keeping everything else.
    pub fn set_owner(&mut self, domid: u32) {
        self.0[0].domid = domid;
    }

    /// Number of entries (counted against the per-node quota).
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// The entries.
    pub fn entries(&self) -> &[Perm] {
        &self.0
    }

    /// Mutable entries (to mark dead domains ignored).
    pub fn entries_mut(&mut self) -> &mut [Perm] {
        &mut self.0
    }

    /// What `domid` may do: everything if privileged or owner; else the first
    /// live entry naming it; else the default in the owner entry.
    pub fn access_for(&self, domid: u32, privileged: bool) -> u8 {
        if privileged || self.owner() == domid {
            return READ | WRITE | OWNER;
        }
        for p in &self.0[1..] {
            if !p.ignore && p.domid == domid {
                return p.access;
            }
        }
        self.0[0].access
    }

    /// Parses the NUL-separated perm strings of SET_PERMS (`r5`, `b0`, ...).
    pub fn parse<'a>(items: impl IntoIterator<Item = &'a [u8]>) -> Result<Self, Errno> {
        let mut v = Vec::new();
        for it in items {
            let (&kind, num) = it.split_first().ok_or(Errno::Inval)?;
            let access = match kind {
                b'n' => 0,
                b'r' => READ,
                b'w' => WRITE,
                b'b' => READ | WRITE,
                _ => return Err(Errno::Inval),
            };
            let num = std::str::from_utf8(num).map_err(|_| Errno::Inval)?;
            if num.is_empty() || !num.bytes().all(|b| b.is_ascii_digit()) {
                return Err(Errno::Inval);
            }
            let domid: u32 = num.parse().map_err(|_| Errno::Inval)?;
            v.push(Perm {
                domid,
                access,
                ignore: false,
            });
        }
        if v.is_empty() {
            return Err(Errno::Inval);
        }
        Ok(Perms(v))
    }

    /// The GET_PERMS reply body: each entry as a NUL-terminated string.
    pub fn to_wire(&self) -> Vec<u8> {
        let mut out = Vec::new();
        for p in &self.0 {
            let c = match p.access & (READ | WRITE) {
                0 => 'n',
                READ => 'r',
                WRITE => 'w',
                _ => 'b',
            };
            out.extend_from_slice(format!("{c}{}", p.domid).as_bytes());
            out.push(0);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owner_and_default() {
        let p = Perms::owned(5, READ);
        assert_eq!(p.access_for(5, false), READ | WRITE | OWNER);
        assert_eq!(p.access_for(6, false), READ);
        assert_eq!(p.access_for(6, true), READ | WRITE | OWNER);
    }

    #[test]
    fn specific_entries_override_default() {
        let mut p = Perms::owned(0, 0).with(3, READ).with(4, READ | WRITE);
        assert_eq!(p.access_for(3, false), READ);
        assert_eq!(p.access_for(4, false), READ | WRITE);
        assert_eq!(p.access_for(9, false), 0);
        p.entries_mut()[1].ignore = true;
        assert_eq!(p.access_for(3, false), 0);
    }

    #[test]
    fn parse_and_format() {
        let items: Vec<&[u8]> = vec![b"n0", b"r12", b"b3", b"w4"];
        let p = Perms::parse(items).unwrap();
        assert_eq!(p.to_wire(), b"n0\0r12\0b3\0w4\0");
        for bad in [&b"x1"[..], b"r", b"", b"r-1", b"r1a", b"r99999999999"] {
            assert_eq!(Perms::parse([bad]), Err(Errno::Inval), "{bad:?}");
        }
        assert_eq!(Perms::parse(std::iter::empty()), Err(Errno::Inval));
    }
}
