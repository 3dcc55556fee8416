//! One builder of the test sites' files, shared by the billing, Factur-X, statement page, cost
//! recovery and PostgreSQL billing tests: the machines, the members with their badges, and the
//! `[billing]` section with the seller's and the customers' identities, tariffs and prepaid
//! credits; what only one test needs (plans, maintenance, costs) is added as TOML. The text is
//! written one `key = value` per line, in a fixed order, so that a test may still edit it with
//! `replace` (a missing key, a wrong check digit).

use std::path::Path;

use fabmeter_collector::api;
use fabmeter_collector::config::Config;

/// Alice's badge.
pub const ALICE: &str = "ba279e0c1e5c2464";
/// Bob's badge.
pub const BOB: &str = "a70e24fcac6bc0a8";

/// `s` as a TOML basic string.
fn q(s: &str) -> String {
    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
}

/// A seller's (`[billing.seller]`) or a member's (`[[billing.customers]]`) identity; empty fields
/// are not written.
#[derive(Debug, Clone, Default)]
pub struct Identity {
    /// Name.
    pub name: &'static str,
    /// Street line.
    pub street: &'static str,
    /// Postcode.
    pub postcode: &'static str,
    /// City.
    pub city: &'static str,
    /// SIRET (the seller).
    pub siret: &'static str,
    /// SIREN (a customer).
    pub siren: &'static str,
    /// VAT number.
    pub vat_id: &'static str,
}

impl Identity {
    fn write(&self, out: &mut String) {
        for (key, v) in [
            ("name", self.name),
            ("street", self.street),
            ("postcode", self.postcode),
            ("city", self.city),
            ("siret", self.siret),
            ("siren", self.siren),
            ("vat_id", self.vat_id),
        ] {
            if !v.is_empty() {
                out.push_str(&format!("{key} = {}\n", q(v)));
            }
        }
    }
}

/// The seller of the test sites, by name only (a site that does not issue Factur-X).
pub fn seller() -> Identity {
    Identity {
        name: "Atelier de Lyon SAS",
        ..Identity::default()
    }
}

/// The same seller with its full Factur-X identity (a valid SIRET and VAT number).
pub fn seller_facturx() -> Identity {
    Identity {
        street: "12 rue des Tanneurs",
        postcode: "69001",
        city: "Lyon",
        siret: "732 829 320 00074",
        vat_id: "FR44732829320",
        ..seller()
    }
}

/// Alice's billing identity: a sole trader (EI) with a VAT number.
pub fn customer_alice() -> Identity {
    Identity {
        name: "Alice Martin EI",
        street: "3 place Bellecour",
        postcode: "69002",
        city: "Lyon",
        siren: "552 100 554",
        vat_id: "FR96552100554",
        ..Identity::default()
    }
}

/// Bob's billing identity: no VAT number, his member name.
pub fn customer_bob() -> Identity {
    Identity {
        street: "8 quai Saint-Vincent",
        postcode: "69001",
        city: "Lyon",
        siren: "443061841",
        ..Identity::default()
    }
}

/// A `[[billing.tariffs]]` entry: its name, start and busy price, then the keys its methods
/// add, in the order they are called.
#[derive(Debug, Clone, Default)]
pub struct Tariff {
    name: &'static str,
    valid_from: &'static str,
    busy_per_min: &'static str,
    more: Vec<(&'static str, String)>,
}

impl Tariff {
    /// Tariff `name` (the machines' kind) from `valid_from`, at `busy_per_min` EUR.
    pub fn new(name: &'static str, valid_from: &'static str, busy_per_min: &'static str) -> Self {
        Tariff {
            name,
            valid_from,
            busy_per_min,
            more: Vec::new(),
        }
    }
    fn with(mut self, key: &'static str, toml: String) -> Self {
        self.more.push((key, toml));
        self
    }
    /// Price of an idle minute.
    pub fn idle(self, eur: &str) -> Self {
        self.with("idle_per_min", q(eur))
    }
    /// Minutes are counted by started blocks of `n`.
    pub fn increment(self, n: u32) -> Self {
        self.with("increment_min", n.to_string())
    }
    /// A member pays at most this a day on it.
    pub fn daily_cap(self, eur: &str) -> Self {
        self.with("daily_cap", q(eur))
    }
    /// A fixed price per session.
    pub fn setup(self, eur: &str) -> Self {
        self.with("setup", q(eur))
    }
    /// The line's text on invoices.
    pub fn label(self, text: &str) -> Self {
        self.with("label", q(text))
    }
    /// Its VAT rate, percent.
    pub fn vat(self, percent: &str) -> Self {
        self.with("vat_rate", q(percent))
    }

    fn write(&self, out: &mut String) {
        out.push_str(&format!(
            "[[billing.tariffs]]\nname = {}\nvalid_from = {}\nbusy_per_min = {}\n",
            q(self.name),
            q(self.valid_from),
            q(self.busy_per_min)
        ));
        for (key, toml) in &self.more {
            out.push_str(&format!("{key} = {toml}\n"));
        }
    }
}

/// A site file being built.
#[derive(Debug, Clone, Default)]
pub struct SiteFile {
    id: &'static str,
    machines: Vec<(&'static str, &'static str, &'static str)>,
    members: Vec<(&'static str, &'static str, &'static str)>,
    billing: Option<(&'static str, bool)>,
    seller: Identity,
    tariffs: Vec<Tariff>,
    customers: Vec<(&'static str, Identity)>,
    credits: Vec<(&'static str, &'static str, &'static str)>,
    tail: Vec<&'static str>,
}

impl SiteFile {
    /// Site `id`, nothing else yet.
    pub fn new(id: &'static str) -> Self {
        SiteFile {
            id,
            ..SiteFile::default()
        }
    }
    /// A machine of `kind`, named `name` (`""`: no name).
    pub fn machine(mut self, id: &'static str, name: &'static str, kind: &'static str) -> Self {
        self.machines.push((id, name, kind));
        self
    }
    /// A member named `name` (`""`: no name) with one badge.
    pub fn member(mut self, id: &'static str, name: &'static str, badge: &'static str) -> Self {
        self.members.push((id, name, badge));
        self
    }
    /// Alice ("Alice Martin") and Bob ("Bob Durand") with their badges.
    pub fn alice_and_bob(self) -> Self {
        self.member("alice", "Alice Martin", ALICE)
            .member("bob", "Bob Durand", BOB)
    }
    /// A `[billing]` section (invoice prefix `ATL`) in `timezone`, issuing Factur-X or not, by
    /// `seller`.
    pub fn billing(mut self, timezone: &'static str, facturx: bool, seller: Identity) -> Self {
        self.billing = Some((timezone, facturx));
        self.seller = seller;
        self
    }
    /// A tariff.
    pub fn tariff(mut self, t: Tariff) -> Self {
        self.tariffs.push(t);
        self
    }
    /// The billing identity of `member`.
    pub fn customer(mut self, member: &'static str, identity: Identity) -> Self {
        self.customers.push((member, identity));
        self
    }
    /// Prepaid credit bought by `member` on `date`, `amount` EUR.
    pub fn credit(
        mut self,
        member: &'static str,
        date: &'static str,
        amount: &'static str,
    ) -> Self {
        self.credits.push((member, date, amount));
        self
    }
    /// More TOML, written after the rest.
    pub fn toml(mut self, text: &'static str) -> Self {
        self.tail.push(text);
        self
    }

    /// The site file's text.
    pub fn text(&self) -> String {
        let mut out = format!("\n[site]\nid = {}\n", q(self.id));
        for (i, (id, name, kind)) in self.machines.iter().enumerate() {
            entry(&mut out, i, "machines", id, name, ("kind", q(kind)));
        }
        for (i, (id, name, badge)) in self.members.iter().enumerate() {
            entry(
                &mut out,
                i,
                "members",
                id,
                name,
                ("badges", format!("[{}]", q(badge))),
            );
        }
        if let Some((timezone, facturx)) = self.billing {
            out.push_str(&format!(
                "\n[billing]\ninvoice_prefix = \"ATL\"\ntimezone = {}\n",
                q(timezone)
            ));
            if facturx {
                out.push_str("facturx = true\n");
            }
            out.push_str("[billing.seller]\n");
            self.seller.write(&mut out);
        }
        for t in &self.tariffs {
            t.write(&mut out);
        }
        for (member, identity) in &self.customers {
            out.push_str(&format!("[[billing.customers]]\nmember = {}\n", q(member)));
            identity.write(&mut out);
        }
        for (member, date, amount) in &self.credits {
            out.push_str(&format!(
                "[[billing.credits]]\nmember = {}\ndate = {}\namount = {}\n",
                q(member),
                q(date),
                q(amount)
            ));
        }
        for t in &self.tail {
            out.push_str(t);
        }
        out
    }
}

/// The `i`-th `[[table]]` entry (a blank line before the first): its id, its name unless empty,
/// and one more key.
fn entry(out: &mut String, i: usize, table: &str, id: &str, name: &str, last: (&str, String)) {
    if i == 0 {
        out.push('\n');
    }
    out.push_str(&format!("[[{table}]]\nid = {}\n", q(id)));
    if !name.is_empty() {
        out.push_str(&format!("name = {}\n", q(name)));
    }
    out.push_str(&format!("{} = {}\n", last.0, last.1));
}

/// The parsed, validated site of `text` with its SQLite ledger at `dir/ledger.sqlite`.
pub fn config(dir: &Path, text: &str) -> Config {
    let mut c = Config::from_toml(text).expect("config");
    c.ledger.path = dir.join("ledger.sqlite");
    c.validate().expect("valid");
    c
}

/// Unix ms of a UTC time.
pub fn ms(s: &str) -> u64 {
    api::parse_time(s).expect("time")
}
