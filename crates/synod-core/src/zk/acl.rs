//! ZooKeeper's ACLs: the check of an operation against a node's ACL and a connection's
//! identities, and the fix-up of a new ACL (create, setACL).

use synod_api::synodpb::{ZkAcl, ZkId};

use super::perm;

/// Whether `identities` may do `wanted` on a node with `acl` (super passes; an empty ACL too).
pub fn permitted(acl: &[ZkAcl], identities: &[ZkId], wanted: i32) -> bool {
    if acl.is_empty() || identities.iter().any(|id| id.scheme == "super") {
        return true;
    }
    acl.iter().any(|entry| {
        entry.perms & wanted != 0
            && match entry.scheme.as_str() {
                "world" => entry.id == "anyone",
                "ip" => identities
                    .iter()
                    .any(|id| id.scheme == "ip" && ip_matches(&entry.id, &id.id)),
                scheme => identities
                    .iter()
                    .any(|id| id.scheme == scheme && id.id == entry.id),
            }
    })
}

/// An IPv4 address with an optional prefix length: (address, bits).
fn ipv4_prefix(text: &str) -> Option<(u32, u32)> {
    let (address, bits) = match text.split_once('/') {
        Some((address, bits)) => (address, bits.parse::<u32>().ok().filter(|b| *b <= 32)?),
        None => (text, 32),
    };
    let address: core::net::Ipv4Addr = address.parse().ok()?;
    Some((u32::from(address), bits))
}

fn ip_matches(entry: &str, address: &str) -> bool {
    let (Some((network, bits)), Ok(address)) =
        (ipv4_prefix(entry), address.parse::<core::net::Ipv4Addr>())
    else {
        return false;
    };
    let mask = if bits == 0 {
        0
    } else {
        u32::MAX << (32 - bits)
    };
    network & mask == u32::from(address) & mask
}

/// Most entries an ACL may have after its fix-up. ZooKeeper has no such cap (a frame bounds the
/// list); here it bounds the work a write does in apply, on every member, and what it stores.
pub const ACL_ENTRIES_MAX: usize = 1024;

/// ZooKeeper's ACL fix-up for create and setACL: `auth` entries become the connection's
/// authenticated identities, duplicates go; an invalid list, or one longer than
/// [`ACL_ENTRIES_MAX`], is `None` (InvalidACL).
pub fn fix_acl(acl: &[ZkAcl], identities: &[ZkId]) -> Option<Vec<ZkAcl>> {
    let mut fixed: Vec<ZkAcl> = Vec::new();
    let mut seen = std::collections::HashSet::new();
    let mut push = |entry: ZkAcl| {
        if seen.insert((entry.perms, entry.scheme.clone(), entry.id.clone())) {
            fixed.push(entry);
        }
        fixed.len() <= ACL_ENTRIES_MAX
    };
    for entry in acl {
        let within = match entry.scheme.as_str() {
            "world" if entry.id == "anyone" => push(entry.clone()),
            "auth" => {
                let mut within = true;
                let mut any = false;
                for id in identities.iter().filter(|id| id.scheme != "ip") {
                    any = true;
                    within &= push(ZkAcl {
                        perms: entry.perms,
                        scheme: id.scheme.clone(),
                        id: id.id.clone(),
                    });
                }
                if !any {
                    return None;
                }
                within
            }
            "digest" if entry.id.split(':').count() == 2 => push(entry.clone()),
            "ip" if ipv4_prefix(&entry.id).is_some() => push(entry.clone()),
            _ => return None,
        };
        if !within {
            return None;
        }
    }
    (!fixed.is_empty()).then_some(fixed)
}

/// The ACL of the built-in nodes and of `/` (world:anyone ALL).
pub fn open_acl() -> Vec<ZkAcl> {
    vec![ZkAcl {
        perms: perm::ALL,
        scheme: "world".to_owned(),
        id: "anyone".to_owned(),
    }]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::zk::perm;

    #[test]
    fn long_acls_are_bounded_and_deduplicated() {
        let ids: Vec<ZkId> = (0..16)
            .map(|i| ZkId {
                scheme: "digest".into(),
                id: format!("user{i}:hash"),
            })
            .collect();
        let auth = |perms| ZkAcl {
            perms,
            scheme: "auth".into(),
            id: String::new(),
        };
        // 65,536 entries that each become 16: refused (at the cap, before the rest is read).
        let huge: Vec<ZkAcl> = (0..65_536).map(auth).collect();
        assert_eq!(fix_acl(&huge, &ids), None);
        // The same entry many times is one entry per identity.
        let repeated: Vec<ZkAcl> = (0..10_000).map(|_| auth(perm::ALL)).collect();
        assert_eq!(fix_acl(&repeated, &ids).map(|acl| acl.len()), Some(16));
    }

    #[test]
    fn acls_are_fixed_and_checked() {
        let ids = vec![
            ZkId {
                scheme: "ip".into(),
                id: "127.0.0.1".into(),
            },
            ZkId {
                scheme: "digest".into(),
                id: "bob:hash".into(),
            },
        ];
        let auth = ZkAcl {
            perms: perm::ALL,
            scheme: "auth".into(),
            id: String::new(),
        };
        let fixed = fix_acl(std::slice::from_ref(&auth), &ids).expect("fixed");
        assert_eq!(fixed.len(), 1);
        assert_eq!(
            (fixed[0].scheme.as_str(), fixed[0].id.as_str()),
            ("digest", "bob:hash")
        );
        assert_eq!(fix_acl(&[auth], &ids[..1]), None);
        assert_eq!(fix_acl(&[], &ids), None);
        let ip = ZkAcl {
            perms: perm::READ,
            scheme: "ip".into(),
            id: "127.0.0.0/8".into(),
        };
        assert!(permitted(std::slice::from_ref(&ip), &ids, perm::READ));
        assert!(!permitted(std::slice::from_ref(&ip), &ids, perm::WRITE));
        assert!(!permitted(&[ip], &ids[1..], perm::READ));
    }
}
