//! Certificates for the security tests, made fresh in a temporary directory
//! with rcgen: a CA; a server certificate for 127.0.0.1 and localhost; client
//! certificates for the operator (CN=odp-coordinator) and a viewer
//! (CN=viewer); an expired operator certificate; certificates for `san =`
//! rules (`san-dns`, `san-uri`, `san-as-cn`) and one no rule names
//! (`stranger`); and a foreign CA with a client and a server certificate of
//! its own.
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use tonic::transport::{Certificate, ClientTlsConfig, Identity};

/// The CN the agents grant OBPROXY_MANAGER (the coordinator's certificate).
pub const OPERATOR: &str = "odp-coordinator";
/// The CN the agents grant READ_ONLY.
pub const VIEWER: &str = "viewer";

pub struct Pki {
    pub dir: tempfile::TempDir,
}

struct Ca {
    issuer: Issuer<'static, KeyPair>,
}

impl Ca {
    fn new(name: &str) -> (Self, String) {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let key = KeyPair::generate().unwrap();
        let pem = params.self_signed(&key).unwrap().pem();
        (
            Self {
                issuer: Issuer::new(params, key),
            },
            pem,
        )
    }

    /// A leaf certificate and its key, both PEM.
    fn leaf(
        &self,
        cn: &str,
        sans: &[&str],
        usage: ExtendedKeyUsagePurpose,
        expired: bool,
    ) -> (String, String) {
        // `uri:<uri>` is a URI SAN; anything else a DNS name or an IP address.
        let (uris, names): (Vec<&str>, Vec<&str>) =
            sans.iter().partition(|s| s.starts_with("uri:"));
        let names: Vec<String> = names.iter().map(|s| s.to_string()).collect();
        let mut params = CertificateParams::new(names).unwrap();
        for uri in uris {
            let uri = uri.trim_start_matches("uri:").try_into().unwrap();
            params.subject_alt_names.push(rcgen::SanType::URI(uri));
        }
        params.distinguished_name.push(DnType::CommonName, cn);
        params.extended_key_usages = vec![usage];
        if expired {
            params.not_before = rcgen::date_time_ymd(2000, 1, 1);
            params.not_after = rcgen::date_time_ymd(2001, 1, 1);
        }
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        (cert.pem(), key.serialize_pem())
    }
}

impl Pki {
    pub fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let write = |name: &str, text: &str| {
            let path = dir.path().join(name);
            std::fs::write(&path, text).unwrap();
            // The daemons refuse a private key others may read.
            if name.ends_with(".key") {
                use std::os::unix::fs::PermissionsExt;
                std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
            }
        };
        let (ca, ca_pem) = Ca::new("odp test CA");
        write("ca.pem", &ca_pem);
        let server = ExtendedKeyUsagePurpose::ServerAuth;
        let client = ExtendedKeyUsagePurpose::ClientAuth;
        let leaves = [
            (
                "server",
                &ca,
                "odp-agent",
                &["127.0.0.1", "localhost"][..],
                server,
                false,
            ),
            ("operator", &ca, OPERATOR, &[][..], client.clone(), false),
            ("viewer", &ca, VIEWER, &[][..], client.clone(), false),
            ("expired", &ca, OPERATOR, &[][..], client.clone(), true),
            // For `san =` rules: a DNS SAN, a URI SAN, the operator's CN as a mere DNS
            // SAN, and a valid certificate no rule names.
            (
                "san-dns",
                &ca,
                "robot",
                &["ops.example.com"][..],
                client.clone(),
                false,
            ),
            (
                "san-uri",
                &ca,
                "robot-2",
                &["uri:spiffe://odp/viewer"][..],
                client.clone(),
                false,
            ),
            (
                "san-as-cn",
                &ca,
                "impostor",
                &[OPERATOR][..],
                client.clone(),
                false,
            ),
            ("stranger", &ca, "stranger", &[][..], client.clone(), false),
        ];
        let (foreign, foreign_pem) = Ca::new("someone else's CA");
        write("foreign-ca.pem", &foreign_pem);
        let foreign_leaves = [
            ("foreign", &foreign, OPERATOR, &[][..], client, false),
            (
                "foreign-server",
                &foreign,
                "odp-agent",
                &["127.0.0.1", "localhost"][..],
                ExtendedKeyUsagePurpose::ServerAuth,
                false,
            ),
        ];
        for (name, ca, cn, sans, usage, expired) in leaves.into_iter().chain(foreign_leaves) {
            let (cert, key) = ca.leaf(cn, sans, usage, expired);
            write(&format!("{name}.pem"), &cert);
            write(&format!("{name}.key"), &key);
        }
        Self { dir }
    }

    pub fn path(&self, file: &str) -> PathBuf {
        self.dir.path().join(file)
    }

    /// `[tls]` with client certificates required, and the roles of the
    /// operator and viewer certificates: what a production agent has.
    pub fn agent_toml(&self) -> String {
        format!(
            r#"
[tls]
cert = {cert:?}
key = {key:?}
client_ca = {ca:?}

[[auth.certificates]]
subject_cn = "{OPERATOR}"
role = "OBPROXY_MANAGER"

[[auth.certificates]]
subject_cn = "{VIEWER}"
role = "READ_ONLY"
"#,
            cert = self.path("server.pem"),
            key = self.path("server.key"),
            ca = self.path("ca.pem"),
        )
    }

    /// A client trusting our CA and presenting `who`'s certificate (a file
    /// stem: `operator`, `viewer`, `expired`, `foreign`), or none.
    pub fn client(&self, who: Option<&str>) -> ClientTlsConfig {
        self.client_trusting("ca.pem", who)
    }

    /// A client trusting only the CA in `ca` (e.g. `foreign-ca.pem`).
    pub fn client_trusting(&self, ca: &str, who: Option<&str>) -> ClientTlsConfig {
        let mut tls =
            ClientTlsConfig::new().ca_certificate(Certificate::from_pem(read(&self.path(ca))));
        if let Some(who) = who {
            tls = tls.identity(Identity::from_pem(
                read(&self.path(&format!("{who}.pem"))),
                read(&self.path(&format!("{who}.key"))),
            ));
        }
        tls
    }
}

fn read(path: &Path) -> Vec<u8> {
    std::fs::read(path).unwrap()
}
