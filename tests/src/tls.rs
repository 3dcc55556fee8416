//! Throw-away certificates for TLS tests, generated with the `openssl` CLI (package `openssl`).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::{HarnessError, Tool};

const OPENSSL_CONFIG: &str = "\
[req]
distinguished_name = dn
prompt = no
[dn]
CN = fabmeter-test
[ca_ext]
basicConstraints = critical, CA:TRUE
keyUsage = critical, keyCertSign, cRLSign
subjectKeyIdentifier = hash
[server_ext]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature, keyEncipherment
extendedKeyUsage = serverAuth
subjectAltName = IP:127.0.0.1, DNS:localhost
[client_ext]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature, keyEncipherment
extendedKeyUsage = clientAuth
";

/// A CA, a server certificate for `127.0.0.1`/`localhost` and a client certificate, all
/// P-256 keys (fast to generate), PEM files in a directory chosen by the test.
#[derive(Clone, Debug)]
pub struct TestPki {
    /// CA certificate (give it to [`crate::TlsListener::new`] and [`crate::MqttCli::cafile`]).
    pub ca_cert: PathBuf,
    /// CA private key.
    pub ca_key: PathBuf,
    /// Server certificate, SAN `IP:127.0.0.1, DNS:localhost`.
    pub server_cert: PathBuf,
    /// Server private key.
    pub server_key: PathBuf,
    /// Client certificate (CN given to [`TestPki::generate`]).
    pub client_cert: PathBuf,
    /// Client private key.
    pub client_key: PathBuf,
}

impl TestPki {
    /// Generates all files in `dir` (which must exist), with `client_cn` as the client
    /// certificate's common name. Valid for ten years from now.
    pub fn generate(dir: &Path, client_cn: &str) -> Result<TestPki, HarnessError> {
        if client_cn.is_empty() || client_cn.contains(['/', '\n', '=']) {
            return Err(HarnessError::Usage(format!(
                "unusable client CN {client_cn:?}"
            )));
        }
        let openssl = Tool::Openssl.locate()?;
        let config = dir.join("openssl.cnf");
        std::fs::write(&config, OPENSSL_CONFIG).map_err(HarnessError::io("writing openssl.cnf"))?;
        let pki = TestPki {
            ca_cert: dir.join("ca.crt"),
            ca_key: dir.join("ca.key"),
            server_cert: dir.join("server.crt"),
            server_key: dir.join("server.key"),
            client_cert: dir.join("client.crt"),
            client_key: dir.join("client.key"),
        };
        let ec = [
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
        ];
        // CA: self-signed.
        let mut command = Command::new(&openssl);
        command
            .args([
                "req",
                "-x509",
                "-days",
                "3650",
                "-subj",
                "/CN=fabmeter-test-ca",
                "-extensions",
                "ca_ext",
            ])
            .args(ec)
            .arg("-config")
            .arg(&config)
            .arg("-keyout")
            .arg(&pki.ca_key)
            .arg("-out")
            .arg(&pki.ca_cert);
        run_openssl(command, &openssl)?;
        pki.issue(
            &openssl,
            &config,
            "server",
            "/CN=127.0.0.1",
            "server_ext",
            2,
            &pki.server_key,
            &pki.server_cert,
        )?;
        pki.issue(
            &openssl,
            &config,
            "client",
            &format!("/CN={client_cn}"),
            "client_ext",
            3,
            &pki.client_key,
            &pki.client_cert,
        )?;
        Ok(pki)
    }

    #[allow(clippy::too_many_arguments)]
    fn issue(
        &self,
        openssl: &Path,
        config: &Path,
        name: &str,
        subject: &str,
        extensions: &str,
        serial: u32,
        key: &Path,
        cert: &Path,
    ) -> Result<(), HarnessError> {
        let csr = cert.with_file_name(format!("{name}.csr"));
        let mut request = Command::new(openssl);
        request
            .args([
                "req",
                "-new",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:prime256v1",
                "-nodes",
                "-subj",
                subject,
            ])
            .arg("-config")
            .arg(config)
            .arg("-keyout")
            .arg(key)
            .arg("-out")
            .arg(&csr);
        run_openssl(request, openssl)?;
        let mut sign = Command::new(openssl);
        sign.args([
            "x509",
            "-req",
            "-days",
            "3650",
            "-set_serial",
            &serial.to_string(),
            "-extensions",
            extensions,
        ])
        .arg("-extfile")
        .arg(config)
        .arg("-in")
        .arg(&csr)
        .arg("-CA")
        .arg(&self.ca_cert)
        .arg("-CAkey")
        .arg(&self.ca_key)
        .arg("-out")
        .arg(cert);
        run_openssl(sign, openssl)
    }
}

fn run_openssl(mut command: Command, openssl: &Path) -> Result<(), HarnessError> {
    let description = format!("{command:?}");
    let output = command
        .stdin(Stdio::null())
        .output()
        .map_err(HarnessError::io(format!("running {}", openssl.display())))?;
    if output.status.success() {
        Ok(())
    } else {
        Err(HarnessError::CommandFailed {
            command: description,
            status: output.status.to_string(),
            stderr: String::from_utf8_lossy(&output.stderr).trim().to_owned(),
        })
    }
}
