//! What the admin session writes back: OK, ERR with obproxy's error codes, and text result sets, framed with consecutive sequence ids in the dialect the login negotiated (with a backend, its greeting's: CLIENT_DEPRECATE_EOF, MariaDB's metadata extensions).

use crate::mysql::CLIENT_DEPRECATE_EOF;
use crate::mysql::auth::{MARIADB_CACHE_METADATA, MARIADB_EXTENDED_METADATA};
use crate::mysql::codec::{packet, put_lenenc_int, put_lenenc_str};

/// utf8mb4_general_ci: `get_default_collation(get_default_charset())` for every column
/// (v4.3.1:src/obproxy/cmd/ob_internal_cmd_handler.cpp:179).
const COLLATION: u16 = 45;
/// `OB_MYSQL_TYPE_VARCHAR`, the type of every column obproxy's handlers declare.
const VARCHAR: u8 = 15;

/// An obproxy error as it reaches the client: the MySQL errno (obproxy's own code when it
/// has no MySQL one, `OMPKError::set_oberrcode`, v4.3.1:src/rpc/obmysql/packet/ompk_error.cpp:118-127),
/// the SQLSTATE and the message (`ob_strerror`, v4.3.1:src/lib/ob_errno.cpp).
#[derive(Debug, Clone, Copy)]
pub struct ObError {
    pub errno: u16,
    pub sqlstate: &'static str,
    pub message: &'static str,
}

/// `OB_ERR_SYS_CONFIG_UNKNOWN` (ob_errno.cpp:1631-1634).
pub const SYS_CONFIG_UNKNOWN: ObError = ObError {
    errno: 5099,
    sqlstate: "42000",
    message: "System config unknown",
};
/// `OB_INVALID_CONFIG` (ob_errno.cpp:479-482).
pub const INVALID_CONFIG: ObError = ObError {
    errno: 4147,
    sqlstate: "HY000",
    message: "Invalid config",
};
/// `OB_NOT_SUPPORTED`, MySQL's ER_NOT_SUPPORTED_YET (ob_errno.cpp:59-62).
pub const NOT_SUPPORTED: ObError = ObError {
    errno: 1235,
    sqlstate: "0A000",
    message: "Not supported feature or function",
};
/// `OB_ERR_OPERATOR_UNKNOWN` with the message obproxy gives a statement `root@proxysys`
/// may not run (v4.3.1:src/obproxy/proxy/mysql/ob_mysql_sm.cpp:8336-8345, ob_errno.cpp:1343-1346).
pub const BAD_INTERNAL_CMD: ObError = ObError {
    errno: 5010,
    sqlstate: "21000",
    message: "Unknown operator, bad internal cmd",
};
/// `OB_ERR_UNEXPECTED`.
pub const INTERNAL_ERROR: ObError = ObError {
    errno: 4016,
    sqlstate: "HY000",
    message: "Internal error",
};

/// The packets of one reply.
pub struct Reply {
    bytes: Vec<u8>,
    seq: u8,
    caps: u64,
}

impl Reply {
    /// A reply whose first packet has sequence id `seq`.
    pub fn new(seq: u8, caps: u64) -> Self {
        Reply {
            bytes: Vec::new(),
            seq,
            caps,
        }
    }

    fn push(&mut self, payload: &[u8]) {
        self.bytes.extend_from_slice(&packet(self.seq, payload));
        self.seq = self.seq.wrapping_add(1);
    }

    /// An OK with no affected rows and no status flags, as `encode_ok_packet` writes it
    /// (v4.3.1:src/obproxy/packet/ob_mysql_packet_util.cpp:157-175).
    pub fn ok(&mut self) {
        self.push(&[0x00, 0, 0, 0, 0, 0, 0]);
    }

    pub fn error(&mut self, e: ObError) {
        self.error_text(e.errno, e.sqlstate, e.message);
    }

    fn error_text(&mut self, errno: u16, sqlstate: &str, message: &str) {
        let mut p = vec![0xFF];
        p.extend_from_slice(&errno.to_le_bytes());
        p.push(b'#');
        p.extend_from_slice(sqlstate.as_bytes());
        p.extend_from_slice(message.as_bytes());
        self.push(&p);
    }

    /// `OB_PASSWORD_WRONG`: 1045, "Access denied for user '%.*s'@'%.*s' (using password:
    /// %s)" (v4.3.1:src/lib/ob_errno.cpp:195-198, v4.3.1:src/obproxy/proxy/mysql/ob_mysql_transact.cpp:7205-7240).
    pub fn access_denied(&mut self, user: &str, host: &str, with_password: bool) {
        let using = if with_password { "YES" } else { "NO" };
        let message = format!("Access denied for user '{user}'@'{host}' (using password: {using})");
        self.error_text(1045, "42000", &message);
    }

    /// A text result set: the column count, one definition per column (catalog `def`, no
    /// schema or table), an EOF, the rows (NULL as 0xFB), and an EOF; under
    /// CLIENT_DEPRECATE_EOF the first EOF is left out and the last is an OK with 0xFE.
    pub fn rows(&mut self, columns: &[&str], rows: &[Vec<Option<String>>]) {
        let mut count = Vec::new();
        put_lenenc_int(&mut count, columns.len() as u64);
        // A MariaDB client that caches metadata is told it follows.
        if self.caps & MARIADB_CACHE_METADATA != 0 {
            count.push(1);
        }
        self.push(&count);
        for name in columns {
            let mut def = Vec::new();
            for part in ["def", "", "", "", name, name] {
                put_lenenc_str(&mut def, part.as_bytes());
            }
            // MariaDB's extended type info: none.
            if self.caps & MARIADB_EXTENDED_METADATA != 0 {
                def.push(0);
            }
            def.push(0x0C);
            def.extend_from_slice(&COLLATION.to_le_bytes());
            def.extend_from_slice(&0u32.to_le_bytes());
            def.push(VARCHAR);
            def.extend_from_slice(&[0, 0, 0, 0, 0]);
            self.push(&def);
        }
        let deprecate_eof = self.caps & u64::from(CLIENT_DEPRECATE_EOF) != 0;
        if !deprecate_eof {
            self.eof();
        }
        for row in rows {
            let mut p = Vec::new();
            for cell in row {
                match cell {
                    Some(text) => put_lenenc_str(&mut p, text.as_bytes()),
                    None => p.push(0xFB),
                }
            }
            self.push(&p);
        }
        if deprecate_eof {
            self.push(&[0xFE, 0, 0, 0, 0, 0, 0]);
        } else {
            self.eof();
        }
    }

    /// An EOF with no warnings and no status flags (ob_mysql_packet_util.cpp:115-131).
    fn eof(&mut self) {
        self.push(&[0xFE, 0, 0, 0, 0]);
    }

    pub fn into_bytes(self) -> Vec<u8> {
        self.bytes
    }
}
