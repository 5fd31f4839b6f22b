//! Certificates made at test time (rcgen): a CA per test, and leaf
//! certificates it signs, written as PEM files into a temp dir.

use std::path::{Path, PathBuf};

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose};

/// A certificate authority, its PEM certificate in `dir`.
pub struct Ca {
    issuer: Issuer<'static, KeyPair>,
    pub cert_file: PathBuf,
    dir: PathBuf,
}

/// A certificate and its key, as PEM files.
#[derive(Clone)]
pub struct Leaf {
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
}

impl Ca {
    /// A new CA named `name`, its files in `dir`.
    pub fn new(dir: &Path, name: &str) -> Ca {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let key = KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        let cert_file = dir.join(format!("{name}.pem"));
        std::fs::write(&cert_file, cert.pem()).unwrap();
        Ca {
            issuer: Issuer::new(params, key),
            cert_file,
            dir: dir.to_path_buf(),
        }
    }

    /// A certificate for `names` (DNS names or IPs), valid now.
    pub fn issue(&self, file: &str, names: &[&str]) -> Leaf {
        self.issue_with(file, names, |_| {})
    }

    /// A certificate for `names` that expired in 2021.
    pub fn issue_expired(&self, file: &str, names: &[&str]) -> Leaf {
        self.issue_with(file, names, |p| {
            p.not_before = rcgen::date_time_ymd(2020, 1, 1);
            p.not_after = rcgen::date_time_ymd(2021, 1, 1);
        })
    }

    fn issue_with(
        &self,
        file: &str,
        names: &[&str],
        edit: impl FnOnce(&mut CertificateParams),
    ) -> Leaf {
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let mut params = CertificateParams::new(names).unwrap();
        params.distinguished_name.push(DnType::CommonName, file);
        edit(&mut params);
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        let leaf = Leaf {
            cert_file: self.dir.join(format!("{file}.pem")),
            key_file: self.dir.join(format!("{file}.key")),
        };
        std::fs::write(&leaf.cert_file, cert.pem()).unwrap();
        std::fs::write(&leaf.key_file, key.serialize_pem()).unwrap();
        leaf
    }
}
