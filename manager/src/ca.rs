//! The manager's certificate authority and the identities it issues.
//!
//! On first start the state directory gets `ca.crt`/`ca.key`, a random `join-token`, the
//! operator certificate `admin.crt`/`admin.key` (URI SAN `varmor://admin/admin`) and the gRPC
//! server certificate `server.crt`/`server.key` (URI SAN `varmor://server/manager`). Later
//! starts reuse them; the server and operator certificates are issued again only when they
//! no longer fit (other names requested, expiring within 30 days, not issued by this CA).
//!
//! Node certificates are issued for a CSR, but the manager sets the subject, the names and
//! the lifetime itself: the CSR only contributes its public key.

use std::collections::BTreeSet;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::Path;
use std::time::{Duration, SystemTime};

use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType, SerialNumber,
};
use ring::rand::SecureRandom;
use varmor_rpc::tls::{identity_uri, Role};

use crate::config::is_dns_name;
use crate::store::{self, read_optional, write_atomic, PRIVATE, PUBLIC};
use crate::Error;

/// Validity of the CA certificate.
const CA_LIFETIME: Duration = Duration::from_secs(10 * 365 * 24 * 3600);
/// Validity of the server and operator certificates.
const LEAF_LIFETIME: Duration = Duration::from_secs(365 * 24 * 3600);
/// Certificates closer than this to their end are issued again at start.
const RENEW_BEFORE: Duration = Duration::from_secs(30 * 24 * 3600);
/// Tolerated clock difference between manager and agents.
const CLOCK_SKEW: Duration = Duration::from_secs(5 * 60);
/// The operator identity of `admin.crt`.
pub const ADMIN_NAME: &str = "admin";
/// The server identity of `server.crt`.
pub const SERVER_NAME: &str = "manager";
/// Largest CSR accepted.
const MAX_CSR_BYTES: usize = 16 * 1024;
/// Most extra names a node may ask for.
const MAX_REQUESTED_SANS: usize = 32;

/// The join token: compared in constant time, never printed.
#[derive(Clone)]
pub struct JoinToken(String);

impl JoinToken {
    /// Whether `presented` is the token (leading and trailing white space ignored).
    pub fn matches(&self, presented: &str) -> bool {
        constant_time_eq(self.0.as_bytes(), presented.trim().as_bytes())
    }
}

impl fmt::Debug for JoinToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("JoinToken(<redacted>)")
    }
}

/// Compares without an early exit, so the time taken does not tell how many leading bytes
/// matched.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// A certificate and key (PEM).
#[derive(Clone)]
pub struct KeyedCert {
    /// The certificate.
    pub cert_pem: String,
    /// The private key.
    pub key_pem: String,
}

impl fmt::Debug for KeyedCert {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyedCert").finish_non_exhaustive()
    }
}

/// A certificate issued to a node.
#[derive(Debug, Clone)]
pub struct IssuedCert {
    /// The certificate (PEM).
    pub cert_pem: String,
    /// When it expires.
    pub not_after: SystemTime,
}

/// The CA: signs node certificates.
pub struct CertAuthority {
    ca_pem: String,
    issuer: Issuer<'static, KeyPair>,
    node_cert_lifetime: Duration,
}

impl fmt::Debug for CertAuthority {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CertAuthority")
            .field("node_cert_lifetime", &self.node_cert_lifetime)
            .finish_non_exhaustive()
    }
}

/// Everything the manager needs from its state directory to serve TLS.
#[derive(Debug)]
pub struct Credentials {
    /// The CA.
    pub ca: CertAuthority,
    /// The gRPC server certificate.
    pub server: KeyedCert,
    /// The join token.
    pub join_token: JoinToken,
}

/// Loads the CA, the join token and the certificates from `dir`, creating what is missing.
pub fn load_or_create(
    dir: &Path,
    listen: SocketAddr,
    tls_sans: &[String],
    node_cert_lifetime: Duration,
) -> Result<Credentials, Error> {
    store::ensure_dir(dir)?;
    let (ca_pem, ca_key) = load_or_create_ca(dir)?;
    let issuer = Issuer::from_ca_cert_pem(&ca_pem, ca_key)
        .map_err(|e| Error::cert(path_str(dir, store::CA_CERT), e))?;
    let ca = CertAuthority {
        ca_pem,
        issuer,
        node_cert_lifetime,
    };
    let join_token = load_or_create_token(dir)?;

    let admin_sans = BTreeSet::from([san_key(&SanType::URI(ia5(&identity_uri(
        Role::Admin,
        ADMIN_NAME,
    ))?))]);
    ca.ensure_leaf(
        dir,
        store::ADMIN_CERT,
        store::ADMIN_KEY,
        &admin_sans,
        || ca.issue_admin(),
    )?;

    let server_sans = server_names(listen, tls_sans)?;
    let wanted: BTreeSet<String> = server_sans.iter().map(san_key).collect();
    let server = ca.ensure_leaf(dir, store::SERVER_CERT, store::SERVER_KEY, &wanted, || {
        ca.issue_server(&server_sans)
    })?;
    Ok(Credentials {
        ca,
        server,
        join_token,
    })
}

fn path_str(dir: &Path, name: &str) -> String {
    dir.join(name).display().to_string()
}

fn load_or_create_ca(dir: &Path) -> Result<(String, KeyPair), Error> {
    let cert_path = dir.join(store::CA_CERT);
    let key_path = dir.join(store::CA_KEY);
    match (read_optional(&cert_path)?, read_optional(&key_path)?) {
        (Some(cert), Some(key)) => {
            let key = KeyPair::from_pem(&key)
                .map_err(|e| Error::cert(key_path.display().to_string(), e))?;
            let der = first_der(&cert, &cert_path.display().to_string())?;
            let (_, parsed) = x509_parser::parse_x509_certificate(&der)
                .map_err(|e| Error::cert(cert_path.display().to_string(), e))?;
            if parsed.public_key().subject_public_key.data.as_ref() != key.public_key_raw() {
                return Err(Error::cert(
                    key_path.display().to_string(),
                    format!("this key does not belong to {}", cert_path.display()),
                ));
            }
            if !parsed.is_ca() {
                return Err(Error::cert(
                    cert_path.display().to_string(),
                    "not a CA certificate",
                ));
            }
            Ok((cert, key))
        }
        (None, None) => {
            let key = KeyPair::generate().map_err(|e| Error::cert("CA key", e))?;
            let mut params = CertificateParams::default();
            let mut dn = DistinguishedName::new();
            dn.push(DnType::CommonName, "varmor CA");
            dn.push(DnType::OrganizationName, "varmor");
            params.distinguished_name = dn;
            params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
            params.key_usages = vec![
                KeyUsagePurpose::KeyCertSign,
                KeyUsagePurpose::CrlSign,
                KeyUsagePurpose::DigitalSignature,
            ];
            set_validity(&mut params, CA_LIFETIME);
            params.serial_number = Some(random_serial()?);
            let cert = params
                .self_signed(&key)
                .map_err(|e| Error::cert("CA certificate", e))?;
            // The key first: a certificate without its key would be unusable.
            write_atomic(&key_path, key.serialize_pem().as_bytes(), PRIVATE)?;
            write_atomic(&cert_path, cert.pem().as_bytes(), PUBLIC)?;
            tracing::info!(file = %cert_path.display(), "created the varmor CA");
            Ok((cert.pem(), key))
        }
        (Some(_), None) => Err(Error::BadStateFile {
            path: key_path,
            reason: format!(
                "missing while {} exists; restore it, or remove {} to create a new CA (every node must then join again)",
                cert_path.display(),
                cert_path.display()
            ),
        }),
        (None, Some(_)) => Err(Error::BadStateFile {
            path: cert_path,
            reason: format!(
                "missing while {} exists; restore it, or remove {} to create a new CA (every node must then join again)",
                key_path.display(),
                key_path.display()
            ),
        }),
    }
}

fn load_or_create_token(dir: &Path) -> Result<JoinToken, Error> {
    let path = dir.join(store::JOIN_TOKEN);
    if let Some(text) = read_optional(&path)? {
        let token = text.trim().to_string();
        if token.len() < 16 {
            return Err(Error::BadStateFile {
                path,
                reason: "the join token must be at least 16 characters; remove the file to create a new one".into(),
            });
        }
        return Ok(JoinToken(token));
    }
    let mut bytes = [0u8; 32];
    ring::rand::SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| Error::cert("join token", "the system random generator failed"))?;
    let token: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    write_atomic(&path, format!("{token}\n").as_bytes(), PRIVATE)?;
    tracing::info!(file = %path.display(), "created the join token");
    Ok(JoinToken(token))
}

impl CertAuthority {
    /// The CA certificate (PEM).
    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    /// Issues a node certificate for `node` with the public key of `csr_pem`: CN and DNS name
    /// `node`, URI `varmor://node/<node>`, `localhost`, `127.0.0.1`, `::1` and the requested
    /// names; client and server authentication.
    pub fn issue_node(
        &self,
        node: &str,
        csr_pem: &str,
        requested_sans: &[String],
    ) -> Result<IssuedCert, Error> {
        if csr_pem.len() > MAX_CSR_BYTES {
            return Err(Error::invalid(
                "csr_pem",
                format!("larger than {MAX_CSR_BYTES} bytes"),
            ));
        }
        if csr_pem.trim().is_empty() {
            return Err(Error::invalid(
                "csr_pem",
                "missing; send a PEM certificate signing request",
            ));
        }
        let csr = CertificateSigningRequestParams::from_pem(csr_pem).map_err(|e| {
            Error::invalid(
                "csr_pem",
                format!("not a valid PEM certificate signing request: {e}"),
            )
        })?;
        if requested_sans.len() > MAX_REQUESTED_SANS {
            return Err(Error::invalid(
                "subject_alt_names",
                format!("at most {MAX_REQUESTED_SANS} names are accepted"),
            ));
        }
        let mut names: Vec<SanType> = vec![
            SanType::URI(ia5(&identity_uri(Role::Node, node))?),
            SanType::DnsName(ia5(node)?),
            SanType::DnsName(ia5("localhost")?),
            SanType::IpAddress(IpAddr::V4(Ipv4Addr::LOCALHOST)),
            SanType::IpAddress(IpAddr::V6(Ipv6Addr::LOCALHOST)),
        ];
        for (i, n) in requested_sans.iter().enumerate() {
            let n = n.trim();
            let san = match n.parse::<IpAddr>() {
                Ok(ip) => SanType::IpAddress(ip),
                Err(_) if is_dns_name(n) => SanType::DnsName(ia5(&n.to_ascii_lowercase())?),
                Err(_) => {
                    return Err(Error::invalid(
                        format!("subject_alt_names[{i}]"),
                        format!("{n:?} is neither an IP address nor a DNS name"),
                    ))
                }
            };
            if !names.contains(&san) {
                names.push(san);
            }
        }
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, node);
        dn.push(DnType::OrganizationName, "varmor nodes");
        params.distinguished_name = dn;
        params.subject_alt_names = names;
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ClientAuth,
            ExtendedKeyUsagePurpose::ServerAuth,
        ];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.use_authority_key_identifier_extension = true;
        params.serial_number = Some(random_serial()?);
        let not_after = set_validity(&mut params, self.node_cert_lifetime);
        let cert = params
            .signed_by(&csr.public_key, &self.issuer)
            .map_err(|e| Error::cert(format!("certificate for node {node:?}"), e))?;
        Ok(IssuedCert {
            cert_pem: cert.pem(),
            not_after,
        })
    }

    fn issue_admin(&self) -> Result<KeyedCert, Error> {
        let key = KeyPair::generate().map_err(|e| Error::cert("operator key", e))?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, ADMIN_NAME);
        dn.push(DnType::OrganizationName, "varmor operators");
        params.distinguished_name = dn;
        params.subject_alt_names = vec![SanType::URI(ia5(&identity_uri(Role::Admin, ADMIN_NAME))?)];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.use_authority_key_identifier_extension = true;
        params.serial_number = Some(random_serial()?);
        set_validity(&mut params, LEAF_LIFETIME);
        let cert = params
            .signed_by(&key, &self.issuer)
            .map_err(|e| Error::cert("operator certificate", e))?;
        Ok(KeyedCert {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }

    fn issue_server(&self, sans: &[SanType]) -> Result<KeyedCert, Error> {
        let key = KeyPair::generate().map_err(|e| Error::cert("server key", e))?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, "varmor-manager");
        dn.push(DnType::OrganizationName, "varmor");
        params.distinguished_name = dn;
        params.subject_alt_names = sans.to_vec();
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.use_authority_key_identifier_extension = true;
        params.serial_number = Some(random_serial()?);
        set_validity(&mut params, LEAF_LIFETIME);
        let cert = params
            .signed_by(&key, &self.issuer)
            .map_err(|e| Error::cert("server certificate", e))?;
        Ok(KeyedCert {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }

    /// Reuses `cert`/`key` in `dir` when they were issued by this CA, belong together, carry
    /// exactly `sans` and stay valid for more than 30 days; otherwise issues new ones.
    fn ensure_leaf(
        &self,
        dir: &Path,
        cert_name: &str,
        key_name: &str,
        sans: &BTreeSet<String>,
        issue: impl FnOnce() -> Result<KeyedCert, Error>,
    ) -> Result<KeyedCert, Error> {
        let cert_path = dir.join(cert_name);
        let key_path = dir.join(key_name);
        if let (Some(cert_pem), Some(key_pem)) =
            (read_optional(&cert_path)?, read_optional(&key_path)?)
        {
            match self.check_leaf(&cert_pem, &key_pem, sans) {
                Ok(()) => return Ok(KeyedCert { cert_pem, key_pem }),
                Err(why) => tracing::info!(
                    file = %cert_path.display(),
                    reason = %why,
                    "issuing the certificate again"
                ),
            }
        }
        let issued = issue()?;
        write_atomic(&key_path, issued.key_pem.as_bytes(), PRIVATE)?;
        write_atomic(&cert_path, issued.cert_pem.as_bytes(), PUBLIC)?;
        tracing::info!(file = %cert_path.display(), "wrote certificate");
        Ok(issued)
    }

    fn check_leaf(
        &self,
        cert_pem: &str,
        key_pem: &str,
        sans: &BTreeSet<String>,
    ) -> Result<(), String> {
        let der = first_der(cert_pem, "certificate").map_err(|e| e.to_string())?;
        let (_, cert) =
            x509_parser::parse_x509_certificate(&der).map_err(|e| format!("unreadable: {e}"))?;
        let ca_der = first_der(&self.ca_pem, "CA").map_err(|e| e.to_string())?;
        let (_, ca) = x509_parser::parse_x509_certificate(&ca_der)
            .map_err(|e| format!("unreadable CA: {e}"))?;
        cert.verify_signature(Some(ca.public_key()))
            .map_err(|_| "not issued by the current CA".to_string())?;
        let key = KeyPair::from_pem(key_pem).map_err(|e| format!("unreadable key: {e}"))?;
        if cert.public_key().subject_public_key.data.as_ref() != key.public_key_raw() {
            return Err("the key does not belong to the certificate".into());
        }
        let end = SystemTime::UNIX_EPOCH
            + Duration::from_secs(
                u64::try_from(cert.validity().not_after.timestamp()).unwrap_or(0),
            );
        if end < SystemTime::now() + RENEW_BEFORE {
            return Err("it expires within 30 days".into());
        }
        let have = cert_san_keys(&cert);
        if &have != sans {
            return Err(format!(
                "its names {:?} differ from the wanted {:?}",
                have, sans
            ));
        }
        Ok(())
    }
}

/// The server certificate's names: localhost, the loopback addresses, the host name, the
/// listen address when it is specific, every `--tls-san`, and `varmor://server/manager`.
fn server_names(listen: SocketAddr, tls_sans: &[String]) -> Result<Vec<SanType>, Error> {
    let mut out = vec![
        SanType::DnsName(ia5("localhost")?),
        SanType::IpAddress(IpAddr::V4(Ipv4Addr::LOCALHOST)),
        SanType::IpAddress(IpAddr::V6(Ipv6Addr::LOCALHOST)),
        SanType::URI(ia5(&identity_uri(Role::Server, SERVER_NAME))?),
    ];
    if let Some(host) = hostname() {
        out.push(SanType::DnsName(ia5(&host)?));
    }
    if !listen.ip().is_unspecified() {
        out.push(SanType::IpAddress(listen.ip()));
    }
    for s in tls_sans {
        let s = s.trim();
        out.push(match s.parse::<IpAddr>() {
            Ok(ip) => SanType::IpAddress(ip),
            Err(_) if is_dns_name(s) => SanType::DnsName(ia5(&s.to_ascii_lowercase())?),
            Err(_) => {
                return Err(Error::Config(format!(
                    "--tls-san {s:?} is neither an IP address nor a DNS name"
                )))
            }
        });
    }
    let mut seen = BTreeSet::new();
    out.retain(|s| seen.insert(san_key(s)));
    Ok(out)
}

/// The host name, when it can be a DNS name.
fn hostname() -> Option<String> {
    let raw = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())?;
    let h = raw.trim().to_ascii_lowercase();
    is_dns_name(&h).then_some(h)
}

fn san_key(s: &SanType) -> String {
    match s {
        SanType::DnsName(n) => format!("dns:{}", n.as_str()),
        SanType::URI(u) => format!("uri:{}", u.as_str()),
        SanType::IpAddress(ip) => format!("ip:{ip}"),
        SanType::Rfc822Name(n) => format!("email:{}", n.as_str()),
        SanType::OtherName(_) => "other".to_string(),
        // SanType is non-exhaustive.
        #[allow(unreachable_patterns)]
        _ => "other".to_string(),
    }
}

fn cert_san_keys(cert: &x509_parser::certificate::X509Certificate<'_>) -> BTreeSet<String> {
    use x509_parser::extensions::GeneralName;
    let mut out = BTreeSet::new();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for n in &san.value.general_names {
            match n {
                GeneralName::DNSName(d) => {
                    out.insert(format!("dns:{d}"));
                }
                GeneralName::URI(u) => {
                    out.insert(format!("uri:{u}"));
                }
                GeneralName::IPAddress(b) => {
                    let ip = match b.len() {
                        4 => <[u8; 4]>::try_from(*b).ok().map(IpAddr::from),
                        16 => <[u8; 16]>::try_from(*b).ok().map(IpAddr::from),
                        _ => None,
                    };
                    if let Some(ip) = ip {
                        out.insert(format!("ip:{ip}"));
                    }
                }
                _ => {
                    out.insert("other".to_string());
                }
            }
        }
    }
    out
}

fn ia5(s: &str) -> Result<rcgen::string::Ia5String, Error> {
    s.to_string()
        .try_into()
        .map_err(|e: rcgen::Error| Error::cert(format!("name {s:?}"), e))
}

/// Sets not_before a little in the past (clock skew) and not_after `lifetime` from now.
fn set_validity(params: &mut CertificateParams, lifetime: Duration) -> SystemTime {
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - CLOCK_SKEW;
    let end = now + lifetime;
    // X.509 keeps whole seconds.
    let end = end.replace_nanosecond(0).unwrap_or(end);
    params.not_after = end;
    SystemTime::from(end)
}

fn random_serial() -> Result<SerialNumber, Error> {
    let mut bytes = [0u8; 16];
    ring::rand::SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| Error::cert("serial number", "the system random generator failed"))?;
    // A positive INTEGER.
    bytes[0] &= 0x7f;
    bytes[0] |= 0x01;
    Ok(SerialNumber::from_slice(&bytes))
}

fn first_der(pem: &str, what: &str) -> Result<Vec<u8>, Error> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::CertificateDer;
    CertificateDer::pem_slice_iter(pem.as_bytes())
        .next()
        .ok_or_else(|| Error::cert(what, "no PEM certificate found"))?
        .map(|c| c.to_vec())
        .map_err(|e| Error::cert(what, format!("unreadable PEM: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr() -> SocketAddr {
        "127.0.0.1:0".parse().expect("addr")
    }

    #[test]
    fn tokens_compare_exactly() {
        let t = JoinToken("abcdef0123456789".into());
        assert!(t.matches("abcdef0123456789"));
        assert!(t.matches(" abcdef0123456789\n"));
        assert!(!t.matches("abcdef012345678"));
        assert!(!t.matches("abcdef0123456788"));
        assert!(!format!("{t:?}").contains("abc"));
    }

    #[test]
    fn first_start_creates_and_later_starts_reuse() {
        let dir = tempfile::tempdir().expect("tempdir");
        let one =
            load_or_create(dir.path(), addr(), &[], Duration::from_secs(3600)).expect("create");
        for f in [
            store::CA_CERT,
            store::CA_KEY,
            store::JOIN_TOKEN,
            store::ADMIN_CERT,
            store::ADMIN_KEY,
            store::SERVER_CERT,
            store::SERVER_KEY,
        ] {
            assert!(dir.path().join(f).exists(), "{f} is created");
        }
        use std::os::unix::fs::PermissionsExt;
        for f in [
            store::CA_KEY,
            store::JOIN_TOKEN,
            store::ADMIN_KEY,
            store::SERVER_KEY,
        ] {
            let mode = std::fs::metadata(dir.path().join(f))
                .expect("meta")
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600, "{f} is private");
        }
        let admin = std::fs::read_to_string(dir.path().join(store::ADMIN_CERT)).expect("admin");
        let two =
            load_or_create(dir.path(), addr(), &[], Duration::from_secs(3600)).expect("reuse");
        assert_eq!(one.ca.ca_pem(), two.ca.ca_pem());
        assert_eq!(one.server.cert_pem, two.server.cert_pem);
        assert!(two.join_token.matches(&one.join_token.0));
        assert_eq!(
            std::fs::read_to_string(dir.path().join(store::ADMIN_CERT)).expect("admin"),
            admin
        );
        // Other names: only the server certificate changes.
        let three = load_or_create(
            dir.path(),
            addr(),
            &["manager.example".into()],
            Duration::from_secs(3600),
        )
        .expect("new names");
        assert_eq!(one.ca.ca_pem(), three.ca.ca_pem());
        assert_ne!(one.server.cert_pem, three.server.cert_pem);
        assert_eq!(
            std::fs::read_to_string(dir.path().join(store::ADMIN_CERT)).expect("admin"),
            admin
        );
        let der = first_der(&three.server.cert_pem, "server").expect("der");
        let (_, cert) = x509_parser::parse_x509_certificate(&der).expect("parse");
        let names = cert_san_keys(&cert);
        assert!(names.contains("dns:manager.example"), "{names:?}");
        assert!(names.contains("ip:127.0.0.1"));
        assert!(names.contains("uri:varmor://server/manager"));
    }

    #[test]
    fn a_lone_ca_key_is_an_error_not_a_new_ca() {
        let dir = tempfile::tempdir().expect("tempdir");
        load_or_create(dir.path(), addr(), &[], Duration::from_secs(3600)).expect("create");
        std::fs::remove_file(dir.path().join(store::CA_CERT)).expect("rm");
        let err = load_or_create(dir.path(), addr(), &[], Duration::from_secs(3600))
            .expect_err("refused");
        assert!(err.to_string().contains("ca.crt"), "{err}");
    }

    #[test]
    fn node_certificates_carry_the_names_the_manager_sets() {
        let dir = tempfile::tempdir().expect("tempdir");
        let creds =
            load_or_create(dir.path(), addr(), &[], Duration::from_secs(7200)).expect("create");
        // The CSR asks for a CN and names of its own; they are ignored.
        let key = KeyPair::generate().expect("key");
        let mut p = CertificateParams::new(vec!["evil.example".to_string()]).expect("params");
        p.subject_alt_names
            .push(SanType::URI(ia5("varmor://admin/admin").expect("uri")));
        p.distinguished_name.push(DnType::CommonName, "admin");
        let csr = p.serialize_request(&key).expect("csr").pem().expect("pem");
        let issued = creds
            .ca
            .issue_node(
                "node-a",
                &csr,
                &["10.1.2.3".into(), "node-a.example".into()],
            )
            .expect("issued");
        let der = first_der(&issued.cert_pem, "node").expect("der");
        let (_, cert) = x509_parser::parse_x509_certificate(&der).expect("parse");
        let names = cert_san_keys(&cert);
        assert!(names.contains("uri:varmor://node/node-a"));
        assert!(names.contains("dns:node-a"));
        assert!(names.contains("ip:10.1.2.3"));
        assert!(names.contains("dns:node-a.example"));
        assert!(!names.contains("uri:varmor://admin/admin"), "{names:?}");
        assert!(!names.contains("dns:evil.example"));
        assert_eq!(
            varmor_rpc::tls::identity_of_certificate(&der),
            Ok(varmor_rpc::tls::Peer::Node("node-a".into()))
        );
        let left = issued
            .not_after
            .duration_since(SystemTime::now())
            .expect("future");
        assert!(left > Duration::from_secs(7000) && left <= Duration::from_secs(7200));

        let err = creds
            .ca
            .issue_node("node-a", "not a csr", &[])
            .expect_err("bad csr");
        assert!(err.to_string().starts_with("csr_pem:"), "{err}");
        let err = creds
            .ca
            .issue_node("node-a", &csr, &["bad name!".into()])
            .expect_err("bad san");
        assert!(
            err.to_string().starts_with("subject_alt_names[0]:"),
            "{err}"
        );
    }
}
