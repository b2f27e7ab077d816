//! The login side of the protocol: the greeting (a backend's, read; or the stand-in's own, written), the client's handshake response, obproxy's `user@tenant#cluster` names, and the `mysql_native_password` check obproxy makes for `root@proxysys`.

use sha1::{Digest, Sha1};

use super::codec::{take_lenenc_int, take_nul_str};
use super::{CLIENT_PROTOCOL_41, CLIENT_SSL};

pub const CLIENT_LONG_PASSWORD: u32 = 1;
pub const CLIENT_FOUND_ROWS: u32 = 1 << 1;
pub const CLIENT_LONG_FLAG: u32 = 1 << 2;
pub const CLIENT_CONNECT_WITH_DB: u32 = 1 << 3;
pub const CLIENT_TRANSACTIONS: u32 = 1 << 13;
pub const CLIENT_SECURE_CONNECTION: u32 = 1 << 15;
pub const CLIENT_MULTI_STATEMENTS: u32 = 1 << 16;
pub const CLIENT_MULTI_RESULTS: u32 = 1 << 17;
pub const CLIENT_PS_MULTI_RESULTS: u32 = 1 << 18;
pub const CLIENT_PLUGIN_AUTH: u32 = 1 << 19;
pub const CLIENT_CONNECT_ATTRS: u32 = 1 << 20;
pub const CLIENT_PLUGIN_AUTH_LENENC: u32 = 1 << 21;
/// `SERVER_STATUS_AUTOCOMMIT`.
pub const AUTOCOMMIT: u16 = 0x0002;
/// utf8mb4_general_ci, obproxy's default collation.
pub const UTF8MB4_GENERAL_CI: u8 = 45;
pub const NATIVE_PASSWORD: &str = "mysql_native_password";

/// What the stand-in's own greeting offers: what its admin session speaks. No TLS, no
/// compression, and EOF packets (no CLIENT_DEPRECATE_EOF), as obproxy's internal commands
/// write them (v4.3.1:src/obproxy/packet/ob_mysql_packet_util.cpp:115-131).
pub const OWN_CAPABILITIES: u32 = CLIENT_LONG_PASSWORD
    | CLIENT_FOUND_ROWS
    | CLIENT_LONG_FLAG
    | CLIENT_CONNECT_WITH_DB
    | CLIENT_PROTOCOL_41
    | CLIENT_TRANSACTIONS
    | CLIENT_SECURE_CONNECTION
    | CLIENT_MULTI_STATEMENTS
    | CLIENT_MULTI_RESULTS
    | CLIENT_PS_MULTI_RESULTS
    | CLIENT_PLUGIN_AUTH
    | CLIENT_CONNECT_ATTRS
    | CLIENT_PLUGIN_AUTH_LENENC;

/// MariaDB's extended capabilities, in the upper 32 bits: a MariaDB server (one without
/// CLIENT_LONG_PASSWORD) offers them in the greeting's last 4 reserved bytes, a MariaDB
/// client takes them in the last 4 filler bytes of its response.
pub const MARIADB_EXTENDED_METADATA: u64 = 1 << 35;
pub const MARIADB_CACHE_METADATA: u64 = 1 << 36;

/// A protocol v10 greeting's parts the login needs.
#[derive(Debug, Clone)]
pub struct Greeting {
    /// With MariaDB's extended capabilities above bit 31.
    pub caps: u64,
    pub salt: Vec<u8>,
}

/// Reads a v10 greeting payload: version 10, the server version, the connection id, the
/// first 8 salt bytes, a filler, the capabilities, then (PROTOCOL_41) the rest of the salt.
pub fn parse_greeting(payload: &[u8]) -> Option<Greeting> {
    let (&10, mut rest) = payload.split_first()? else {
        return None;
    };
    take_nul_str(&mut rest)?;
    let fixed = rest.get(..4 + 8 + 1 + 2)?;
    let mut salt = fixed[4..12].to_vec();
    let lower = u32::from(u16::from_le_bytes([fixed[13], fixed[14]]));
    rest = &rest[15..];
    // charset (1), status (2), upper capabilities (2), salt length (1), reserved (10)
    let upper = rest
        .get(3..5)
        .map_or(0, |u| u32::from(u16::from_le_bytes([u[0], u[1]])));
    let caps = lower | upper << 16;
    let extended = match rest.get(12..16) {
        Some(e) if caps & CLIENT_LONG_PASSWORD == 0 => u32::from_le_bytes([e[0], e[1], e[2], e[3]]),
        _ => 0,
    };
    if let Some(tail) = rest.get(16..) {
        let salt_len = rest.get(5).map_or(21, |l| usize::from(*l));
        let more = salt_len.saturating_sub(9).max(12);
        salt.extend_from_slice(&tail[..more.min(tail.len())]);
        while salt.last() == Some(&0) {
            salt.pop();
        }
    }
    (caps & CLIENT_PROTOCOL_41 != 0).then_some(Greeting {
        caps: u64::from(caps) | u64::from(extended) << 32,
        salt,
    })
}

/// The stand-in's own greeting payload: obproxy answers the connection itself with
/// `mysql_version` as the server version and its own scramble
/// (v4.3.1:src/obproxy/proxy/mysql/ob_mysql_sm.cpp:8121-8160).
pub fn own_greeting(connection_id: u32, server_version: &str, salt: &[u8; 20]) -> Vec<u8> {
    let mut p = vec![10];
    p.extend_from_slice(server_version.as_bytes());
    p.push(0);
    p.extend_from_slice(&connection_id.to_le_bytes());
    p.extend_from_slice(&salt[..8]);
    p.push(0);
    p.extend_from_slice(&(OWN_CAPABILITIES as u16).to_le_bytes());
    p.push(UTF8MB4_GENERAL_CI);
    p.extend_from_slice(&AUTOCOMMIT.to_le_bytes());
    p.extend_from_slice(&((OWN_CAPABILITIES >> 16) as u16).to_le_bytes());
    p.push(21);
    p.extend_from_slice(&[0; 10]);
    p.extend_from_slice(&salt[8..]);
    p.push(0);
    p.extend_from_slice(NATIVE_PASSWORD.as_bytes());
    p.push(0);
    p
}

/// A client's HandshakeResponse41.
#[derive(Debug, Clone)]
pub struct Response {
    /// With MariaDB's extended capabilities above bit 31.
    pub caps: u64,
    pub user: String,
    pub auth: Vec<u8>,
    pub plugin: Option<String>,
}

/// An SSLRequest: the first 32 bytes of a response, with CLIENT_SSL, before TLS begins.
pub fn is_ssl_request(payload: &[u8]) -> bool {
    payload.len() == 32
        && payload
            .get(..4)
            .is_some_and(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]) & CLIENT_SSL != 0)
}

pub fn parse_response(payload: &[u8]) -> Option<Response> {
    let caps = u32::from_le_bytes(payload.get(..4)?.try_into().ok()?);
    if caps & CLIENT_PROTOCOL_41 == 0 {
        return None;
    }
    let mut rest = payload.get(32..)?;
    let user = String::from_utf8_lossy(take_nul_str(&mut rest)?).into_owned();
    let auth = if caps & CLIENT_PLUGIN_AUTH_LENENC != 0 {
        let len = usize::try_from(take_lenenc_int(&mut rest)?).ok()?;
        let auth = rest.get(..len)?.to_vec();
        rest = &rest[len..];
        auth
    } else if caps & CLIENT_SECURE_CONNECTION != 0 {
        let (&len, tail) = rest.split_first()?;
        let auth = tail.get(..usize::from(len))?.to_vec();
        rest = &tail[usize::from(len)..];
        auth
    } else {
        take_nul_str(&mut rest)?.to_vec()
    };
    if caps & CLIENT_CONNECT_WITH_DB != 0 {
        take_nul_str(&mut rest);
    }
    let plugin = (caps & CLIENT_PLUGIN_AUTH != 0)
        .then(|| take_nul_str(&mut rest).map(|p| String::from_utf8_lossy(p).into_owned()))
        .flatten();
    let extended = match payload.get(28..32) {
        Some(e) if caps & CLIENT_LONG_PASSWORD == 0 => u32::from_le_bytes([e[0], e[1], e[2], e[3]]),
        _ => 0,
    };
    Some(Response {
        caps: u64::from(caps) | u64::from(extended) << 32,
        user,
        auth,
        plugin,
    })
}

/// A login name as obproxy reads it: `user@tenant#cluster` (tenant and cluster optional)
/// or `cluster:tenant:user`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Account {
    pub user: String,
    pub tenant: String,
    pub cluster: Option<String>,
}

impl Account {
    pub fn parse(full: &str) -> Account {
        let colons: Vec<&str> = full.split(':').collect();
        if let [cluster, tenant, user] = colons.as_slice() {
            return Account {
                user: (*user).to_owned(),
                tenant: (*tenant).to_owned(),
                cluster: Some((*cluster).to_owned()),
            };
        }
        let (user_tenant, cluster) = match full.split_once('#') {
            Some((ut, c)) => (ut, Some(c.to_owned())),
            None => (full, None),
        };
        let (user, tenant) = user_tenant.split_once('@').unwrap_or((user_tenant, ""));
        Account {
            user: user.to_owned(),
            tenant: tenant.to_owned(),
            cluster,
        }
    }

    /// `root@proxysys` (OB_PROXYSYS_USER_NAME, OB_PROXYSYS_TENANT_NAME;
    /// v4.3.1:src/obproxy/proxy/mysql/ob_mysql_sm.cpp:2260-2264).
    pub fn is_proxysys_root(&self) -> bool {
        self.user == "root" && self.tenant == "proxysys"
    }
}

/// obproxy's check for `root@proxysys` (v4.3.1:src/obproxy/proxy/mysql/ob_mysql_client_session.cpp:1651-1688):
/// `obproxy_sys_password` holds SHA1(password) in hex ("stage 1"); an empty response passes
/// only when it is empty; otherwise the `mysql_native_password` scramble of that stage 1
/// against `salt` must match.
pub fn native_password_ok(stage1_hex: &str, salt: &[u8], response: &[u8]) -> bool {
    if response.is_empty() {
        return stage1_hex.is_empty();
    }
    // `encrypt_stage1_to_stage2_hex` wants exactly 40 hex digits (ob_encrypted_helper.cpp:165-177).
    let Ok(stage1) = hex::decode(stage1_hex) else {
        return false;
    };
    if stage1.len() != 20 || response.len() != 20 {
        return false;
    }
    let stage2 = Sha1::digest(&stage1);
    let mut mix = Sha1::new();
    mix.update(salt);
    mix.update(stage2);
    let mix = mix.finalize();
    let candidate: Vec<u8> = response
        .iter()
        .zip(mix.iter())
        .map(|(r, m)| r ^ m)
        .collect();
    Sha1::digest(&candidate)[..] == stage2[..]
}

/// The stage 1 `ALTER proxyconfig SET obproxy_sys_password = '<plain>'` stores: SHA1 of the
/// text, in lower-case hex (v4.3.1:src/lib/encrypt/ob_encrypted_helper.cpp:50-88).
pub fn stage1_hex(plain: &str) -> String {
    hex::encode(Sha1::digest(plain.as_bytes()))
}

/// An AuthSwitchRequest to `mysql_native_password` with `salt`, for a client that answered
/// with another plugin.
pub fn auth_switch(salt: &[u8]) -> Vec<u8> {
    let mut p = vec![0xFE];
    p.extend_from_slice(NATIVE_PASSWORD.as_bytes());
    p.push(0);
    p.extend_from_slice(salt);
    p.push(0);
    p
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The client side of mysql_native_password, as MySQL's `scramble()` computes it.
    fn scramble(password: &str, salt: &[u8]) -> Vec<u8> {
        let stage1 = Sha1::digest(password.as_bytes());
        let stage2 = Sha1::digest(stage1);
        let mut mix = Sha1::new();
        mix.update(salt);
        mix.update(stage2);
        mix.finalize()
            .iter()
            .zip(stage1.iter())
            .map(|(m, s)| m ^ s)
            .collect()
    }

    #[test]
    fn the_native_password_check_accepts_the_right_password_only() {
        let salt = b"abcdefghijklmnopqrst";
        let stored = stage1_hex("s3cret");
        assert_eq!(stored, "fef341f85d87439e7d91a2d465b9871ef66b5e98");
        assert!(native_password_ok(&stored, salt, &scramble("s3cret", salt)));
        assert!(!native_password_ok(&stored, salt, &scramble("wrong", salt)));
        assert!(!native_password_ok(
            &stored,
            b"another salt 20 byte",
            &scramble("s3cret", salt)
        ));
        assert!(!native_password_ok(&stored, salt, b""), "no password given");
        assert!(
            native_password_ok("", salt, b""),
            "empty item, empty password"
        );
        assert!(!native_password_ok("", salt, &scramble("x", salt)));
        assert!(native_password_ok(
            &stored.to_uppercase(),
            salt,
            &scramble("s3cret", salt)
        ));
    }

    #[test]
    fn names_parse_in_both_of_obproxys_forms() {
        let a = Account::parse("root@proxysys");
        assert!(a.is_proxysys_root());
        assert_eq!(a.cluster, None);
        let b = Account::parse("root@proxysys#obcluster");
        assert!(b.is_proxysys_root());
        assert_eq!(b.cluster.as_deref(), Some("obcluster"));
        assert!(Account::parse("obcluster:proxysys:root").is_proxysys_root());
        assert!(!Account::parse("root@sys").is_proxysys_root());
        assert!(!Account::parse("root").is_proxysys_root());
    }

    #[test]
    fn the_own_greeting_reads_back() {
        let salt = *b"0123456789abcdefghij";
        let greeting = parse_greeting(&own_greeting(7, "5.6.25", &salt)).unwrap();
        assert_eq!(greeting.caps, u64::from(OWN_CAPABILITIES));
        assert_eq!(greeting.salt, salt);
    }
}
