#!/usr/bin/python3
"""Writes the golden cases for the message -> Graph sendMail mapping.

Every case is data in this file: the message as an SMTP client delivers it
(after dot-unstuffing, CRLF line endings), its envelope, and the request body
the mapper must produce. The expectations were worked out by hand from the
mapping rules (tests/data/map/README.md); Python only does the mechanical
parts: base64 of attachment bytes that are defined once here, charset
encoding of text written here as Unicode, percent/RFC 2047 encoding of names.

Usage:  /usr/bin/python3 tests/data/map/make_cases.py [OUTDIR]
Writes NAME.eml, NAME.env and NAME.json for every case into OUTDIR (default:
this file's directory) and removes stale triples there that no longer
correspond to a case.
"""
import base64
import hashlib
import io
import json
import os
import struct
import sys
import zipfile
import zlib

HERE = os.path.dirname(os.path.abspath(__file__))

# --------------------------------------------------------------------------
# building messages


def T(s, enc="ascii"):
    """Text with LF line ends -> bytes with CRLF line ends, in charset enc."""
    return s.replace("\n", "\r\n").encode(enc)


def M(*pieces):
    """Concatenates str (ASCII, LF -> CRLF) and bytes (taken as they are)."""
    out = b""
    for p in pieces:
        out += p if isinstance(p, bytes) else T(p)
    return out


def crlf(s):
    return s.replace("\n", "\r\n")


def b64w(data, width=76):
    """base64 as it appears in a message: lines of `width`, LF-terminated."""
    s = base64.b64encode(data).decode()
    return "".join(s[i:i + width] + "\n" for i in range(0, len(s), width))


def part(headers, body):
    """A MIME entity: header lines (LF-terminated str), blank line, body."""
    return M(headers, "\n", body)


def mp(boundary, parts, preamble=None, epilogue=None):
    """A multipart body. Each part is followed by CRLF--boundary, so the
    CRLF before a delimiter is not part content (RFC 2046)."""
    bnd = boundary.encode()
    out = b""
    if preamble is not None:
        out += M(preamble) + b"\r\n"
    for p in parts:
        out += b"--" + bnd + b"\r\n" + p + b"\r\n"
    out += b"--" + bnd + b"--\r\n"
    if epilogue is not None:
        out += M(epilogue)
    return out


def qword(s, charset, codec=None):
    """RFC 2047 Q encoded-word of s in charset."""
    out = []
    for byte in s.encode(codec or charset):
        c = chr(byte)
        if c == " ":
            out.append("_")
        elif byte < 128 and (c.isalnum() or c in "!*+-/"):
            out.append(c)
        else:
            out.append("=%02X" % byte)
    return "=?%s?Q?%s?=" % (charset, "".join(out))


def bword(s, charset, codec=None):
    """RFC 2047 B encoded-word of s in charset."""
    return "=?%s?B?%s?=" % (
        charset, base64.b64encode(s.encode(codec or charset)).decode())


def pct(s, charset="utf-8"):
    """RFC 2231 percent-encoding (attribute-char kept)."""
    keep = set(b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
               b"0123456789!#$&+-.^_`|~")
    return "".join(chr(b) if b in keep else "%%%02X" % b
                   for b in s.encode(charset))


def same_decoding(data, codecs):
    """Asserts that data decodes identically under all codecs (so that the
    expectation does not depend on which variant table the C code uses)."""
    texts = {c: data.decode(c) for c in codecs}
    assert len(set(texts.values())) == 1, texts


# --------------------------------------------------------------------------
# attachment bytes (small, real headers, deterministic)


def prng(seed, n):
    out = b""
    block = hashlib.sha256(seed.encode()).digest()
    while len(out) < n:
        block = hashlib.sha256(block).digest()
        out += block
    return out[:n]


def make_pdf(label, payload=b""):
    content = ("BT /F1 12 Tf 20 50 Td (%s) Tj ET\n" % label).encode() + payload
    objs = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 200 100] "
        b"/Resources << /Font << /F1 5 0 R >> >> /Contents 4 0 R >>",
        b"<< /Length %d >>\nstream\n" % len(content) + content
        + b"\nendstream",
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
    ]
    out = b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n"
    offsets = []
    for i, o in enumerate(objs, 1):
        offsets.append(len(out))
        out += b"%d 0 obj\n" % i + o + b"\nendobj\n"
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objs) + 1)
    out += b"".join(b"%010d 00000 n \n" % o for o in offsets)
    out += b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (
        len(objs) + 1, xref)
    return out


def make_png(w, h, rgb):
    raw = b"".join(b"\x00" + bytes(rgb) * w for _ in range(h))

    def chunk(kind, data):
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))
    return (b"\x89PNG\r\n\x1a\n"
            + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(raw, 0))   # stored: deterministic
            + chunk(b"IEND", b""))


GIF = (b"GIF89a\x01\x00\x01\x00\x80\x00\x00\xff\xff\xff\x00\x00\x00"
       b"!\xf9\x04\x01\x00\x00\x00\x00,\x00\x00\x00\x00\x01\x00\x01\x00"
       b"\x00\x02\x02D\x01\x00;")


def make_jpeg(seed):
    return (b"\xff\xd8\xff\xe0\x00\x10JFIF\x00\x01\x01\x00\x00\x48\x00\x48"
            b"\x00\x00\xff\xdb\x00\x43\x00" + bytes(range(1, 65))
            + b"\xff\xc0\x00\x11\x08\x00\x10\x00\x10\x03\x01\x22\x00\x02"
            b"\x11\x01\x03\x11\x01\xff\xda\x00\x0c\x03\x01\x00\x02\x11\x03"
            b"\x11\x00\x3f\x00" + prng(seed, 160) + b"\xff\xd9")


def make_tiff(seed):
    return b"II*\x00\x08\x00\x00\x00\x00\x00" + prng(seed, 120)


def make_zip(files):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as z:
        for name, data in files:
            z.writestr(zipfile.ZipInfo(name, (2024, 3, 1, 12, 0, 0)), data)
    return buf.getvalue()


def make_der(seed):
    return (b"\x30\x82\x01\x2c\x06\x09\x2a\x86\x48\x86\xf7\x0d\x01\x07\x02"
            b"\xa0\x82\x01\x1d" + prng(seed, 285))


# --------------------------------------------------------------------------
# building expectations


def addr(address, name=None):
    e = {"address": address}
    if name:
        e["name"] = name
    return {"emailAddress": e}


def text(s):
    return {"contentType": "text", "content": crlf(s)}


def html(s):
    return {"contentType": "html", "content": crlf(s)}


def att(name, ctype, data, cid=None):
    a = {"@odata.type": "#microsoft.graph.fileAttachment", "name": name,
         "contentType": ctype,
         "contentBytes": base64.b64encode(data).decode(),
         "isInline": cid is not None}
    if cid is not None:
        a["contentId"] = cid
    return a


def hdr(name, value):
    return {"name": name, "value": value}


def env(mail_from, *rcpts, save=True):
    return {"from": mail_from, "rcpts": list(rcpts), "save": save}


CASES = []


def case(name, envelope, eml, message):
    assert all(c[0] != name for c in CASES), name
    CASES.append((name, envelope, eml, message))


# ==========================================================================
# the cases
# ==========================================================================

# ---- plain US-ASCII text, 7bit, Message-ID, dot-unstuffed lines ---------
BODY = """Hi Alice,

the invoice 2024-0117 was approved and will be paid on Friday.
A line that starts with a dot:
.this line survived dot-unstuffing
..and so did this one

Regards,
Accounts Payable
"""
case("plain-ascii",
     env("ap@corp.example", "alice@corp.example"),
     M("""Return-Path: <ap@corp.example>
Date: Mon, 4 Mar 2024 09:15:00 +0100
From: Accounts Payable <ap@corp.example>
To: Alice Example <alice@corp.example>
Subject: Invoice 2024-0117 approved
Message-ID: <20240304091500.4711@corp.example>
MIME-Version: 1.0
Content-Type: text/plain; charset=us-ascii
Content-Transfer-Encoding: 7bit

""", BODY),
     {"subject": "Invoice 2024-0117 approved",
      "from": addr("ap@corp.example", "Accounts Payable"),
      "toRecipients": [addr("alice@corp.example", "Alice Example")],
      "internetMessageId": "<20240304091500.4711@corp.example>",
      "body": text(BODY)})

# ---- no Subject, no MIME headers at all --------------------------------
BODY = "No subject line on this one.\n"
case("no-subject",
     env("ops@corp.example", "bob@corp.example"),
     M("""Date: Mon, 4 Mar 2024 10:00:00 +0100
From: ops@corp.example
To: bob@corp.example

""", BODY),
     {"subject": "",
      "from": addr("ops@corp.example"),
      "toRecipients": [addr("bob@corp.example")],
      "body": text(BODY)})

# ---- no From header (cron style) -----------------------------------------
BODY = "backup: 14 files, 2.1 GB, ok\n"
case("no-from-header",
     env("root@backup01.corp.example", "root@corp.example"),
     M("""To: root@corp.example
Subject: Cron <root@backup01> /usr/local/bin/backup --nightly
Date: Tue, 5 Mar 2024 02:00:01 +0100

""", BODY),
     {"subject": "Cron <root@backup01> /usr/local/bin/backup --nightly",
      "toRecipients": [addr("root@corp.example")],
      "body": text(BODY)})

# ---- empty body ------------------------------------------------------------
case("empty-body",
     env("alice@corp.example", "bob@corp.example"),
     M("""From: Alice <alice@corp.example>
To: Bob <bob@corp.example>
Subject: (empty)
MIME-Version: 1.0
Content-Type: text/plain; charset=utf-8

"""),
     {"subject": "(empty)",
      "from": addr("alice@corp.example", "Alice"),
      "toRecipients": [addr("bob@corp.example", "Bob")],
      "body": text("")})

# ---- headers only, not even the blank line --------------------------------
case("headers-only-no-blank-line",
     env("monitor@corp.example", "oncall@corp.example"),
     M("""From: monitor@corp.example
To: oncall@corp.example
Subject: ping
"""),
     {"subject": "ping",
      "from": addr("monitor@corp.example"),
      "toRecipients": [addr("oncall@corp.example")],
      "body": text("")})

# ---- ISO-8859-1, 8bit ------------------------------------------------------
BODY = ("Grüße aus Köln!\n"
        "Schöne Grüße, naïve Façade, 21 °C, ½ Preis, © 2024.\n"
        "«Zitat» ¿Qué tal? Ñandú, Øresund, Þór.\n")
case("body-latin1-8bit",
     env("klaus@corp.example", "maria@corp.example"),
     M("""From: Klaus <klaus@corp.example>
To: Maria <maria@corp.example>
Subject: Gruesse
MIME-Version: 1.0
Content-Type: text/plain; charset="ISO-8859-1"
Content-Transfer-Encoding: 8bit

""", T(BODY, "iso-8859-1")),
     {"subject": "Gruesse",
      "from": addr("klaus@corp.example", "Klaus"),
      "toRecipients": [addr("maria@corp.example", "Maria")],
      "body": text(BODY)})

# ---- Windows-1252, 8bit: curly quotes, euro 0x80, dashes ------------------
BODY = ("“Quoted” text and ‘single’ quotes.\n"
        "Price: 100 € – en dash — em dash… ellipsis.\n"
        "Trademark™, bullet •, Œuvre, Žižka, ‰, †.\n")
assert b"\x80" in BODY.encode("cp1252") and b"\x93" in BODY.encode("cp1252")
case("body-windows-1252-8bit",
     env("sales@corp.example", "customer@partner.example"),
     M("""From: Sales <sales@corp.example>
To: customer@partner.example
Subject: Your quote
MIME-Version: 1.0
Content-Type: text/plain; charset=Windows-1252
Content-Transfer-Encoding: 8bit

""", T(BODY, "cp1252")),
     {"subject": "Your quote",
      "from": addr("sales@corp.example", "Sales"),
      "toRecipients": [addr("customer@partner.example")],
      "body": text(BODY)})

# ---- Shift_JIS, 8bit -------------------------------------------------------
BODY = ("お世話になっております。\n"
        "請求書を添付いたします。\n"
        "ご確認のほど、よろしくお願いいたします。\n"
        "山田太郎\n")
same_decoding(T(BODY, "shift_jis"), ["shift_jis", "cp932", "shift_jisx0213"])
case("body-shift-jis-8bit",
     env("yamada@corp.example", "tanaka@partner.example"),
     M("""From: yamada@corp.example
To: tanaka@partner.example
Subject: """, bword("請求書の送付", "Shift_JIS"), """
MIME-Version: 1.0
Content-Type: text/plain; charset=Shift_JIS
Content-Transfer-Encoding: 8bit

""", T(BODY, "shift_jis")),
     {"subject": "請求書の送付",
      "from": addr("yamada@corp.example"),
      "toRecipients": [addr("tanaka@partner.example")],
      "body": text(BODY)})

# ---- ISO-2022-JP, 7bit, B-encoded subject and From name ----------------
BODY = ("こんにちは。\n"
        "会議は午後三時からです。\n"
        "資料を準備してください。\n")
same_decoding(T(BODY, "iso2022_jp"), ["iso2022_jp", "iso2022_jp_2"])
case("body-iso-2022-jp",
     env("suzuki@corp.example", "sato@corp.example"),
     M("""From: """, bword("鈴木一郎", "ISO-2022-JP"), """ <suzuki@corp.example>
To: sato@corp.example
Subject: """, bword("会議のお知らせ", "ISO-2022-JP"), """
Message-ID: <5f3a.0001@corp.example>
MIME-Version: 1.0
Content-Type: text/plain; charset=ISO-2022-JP
Content-Transfer-Encoding: 7bit

""", T(BODY, "iso2022_jp")),
     {"subject": "会議のお知らせ",
      "from": addr("suzuki@corp.example", "鈴木一郎"),
      "toRecipients": [addr("sato@corp.example")],
      "internetMessageId": "<5f3a.0001@corp.example>",
      "body": text(BODY)})

# ---- KOI8-R, 8bit ----------------------------------------------------------
BODY = ("Здравствуйте!\n"
        "Отчёт за март во вложении.\n"
        "С уважением,\nИван\n")
case("body-koi8r",
     env("ivan@corp.example", "olga@corp.example"),
     M("""From: """, bword("Иван Петров", "KOI8-R"), """ <ivan@corp.example>
To: olga@corp.example
Subject: """, bword("Отчёт за март", "KOI8-R"), """
MIME-Version: 1.0
Content-Type: text/plain; charset="koi8-r"
Content-Transfer-Encoding: 8bit

""", T(BODY, "koi8-r")),
     {"subject": "Отчёт за март",
      "from": addr("ivan@corp.example", "Иван Петров"),
      "toRecipients": [addr("olga@corp.example")],
      "body": text(BODY)})

# ---- UTF-8, base64 -----------------------------------------------------
BODY = ("Hello 👋\n"
        "Καλημέρα, Привет, 你好, مرحبا, שלום\n"
        "Smørrebrød – 10 €\n")
case("body-utf8-base64",
     env("intl@corp.example", "world@partner.example"),
     M("""From: Intl Team <intl@corp.example>
To: world@partner.example
Subject: Greetings
MIME-Version: 1.0
Content-Type: text/plain; charset=UTF-8
Content-Transfer-Encoding: base64

""", b64w(T(BODY, "utf-8"))),
     {"subject": "Greetings",
      "from": addr("intl@corp.example", "Intl Team"),
      "toRecipients": [addr("world@partner.example")],
      "body": text(BODY)})

# ---- quoted-printable: soft breaks, =3D, encoded trailing space/tab,
#      lowercase hex, a space before a soft break, final soft break -------
QP = ("This is a long line that has been wrapped by the quoted-printable encod=\n"
      "er and must come back as one line.\n"
      "Equals sign: 1 + 1 =3D 2, and a=3Db.\n"
      "Trailing space here:=20\n"
      "Trailing tab here:=09\n"
      "Caf=C3=A9 cr=c3=a8me with lowercase hex.\n"
      "A space before a soft break is kept =\n"
      "right here.\n"
      "=E2=82=AC sign at line start.\n"
      "The text ends without a newline=\n")
BODY = ("This is a long line that has been wrapped by the quoted-printable encoder"
        " and must come back as one line.\n"
        "Equals sign: 1 + 1 = 2, and a=b.\n"
        "Trailing space here: \n"
        "Trailing tab here:\t\n"
        "Café crème with lowercase hex.\n"
        "A space before a soft break is kept right here.\n"
        "€ sign at line start.\n"
        "The text ends without a newline")
case("qp-soft-breaks",
     env("qp@corp.example", "reader@corp.example"),
     M("""From: qp@corp.example
To: reader@corp.example
Subject: QP test
MIME-Version: 1.0
Content-Type: text/plain; charset=utf-8
Content-Transfer-Encoding: quoted-printable

""", QP),
     {"subject": "QP test",
      "from": addr("qp@corp.example"),
      "toRecipients": [addr("reader@corp.example")],
      "body": text(BODY)})

# ---- Q-encoded ISO-8859-1 subject (underscore, =5F) + QP latin1 body ----
QP = ("Bonjour Andr=E9,\n"
      "voici le menu: caf=E9, cr=E8me br=FBl=E9e, cr=EApes.\n"
      "=C0 bient=F4t!\n")
BODY = ("Bonjour André,\n"
        "voici le menu: café, crème brûlée, crêpes.\n"
        "À bientôt!\n")
case("qp-latin1-subject",
     env("chef@corp.example", "andre@partner.example"),
     M("""From: Chef <chef@corp.example>
To: =?ISO-8859-1?Q?Andr=E9_Dupont?= <andre@partner.example>
Subject: =?ISO-8859-1?Q?Caf=E9_cr=E8me_=26_cr=EApes_=5Fsp=E9cial=5F?=
MIME-Version: 1.0
Content-Type: text/plain; charset=iso-8859-1
Content-Transfer-Encoding: quoted-printable

""", QP),
     {"subject": "Café crème & crêpes _spécial_",
      "from": addr("chef@corp.example", "Chef"),
      "toRecipients": [addr("andre@partner.example", "André Dupont")],
      "body": text(BODY)})

# ---- B-encoded UTF-8 subject ----------------------------------------------
case("subject-b-utf8",
     env("bank@corp.example", "juergen@corp.example"),
     M("""From: bank@corp.example
To: juergen@corp.example
Subject: """, bword("Überweisung bestätigt ✓", "UTF-8"), """
MIME-Version: 1.0
Content-Type: text/plain; charset=us-ascii

Transfer confirmed.
"""),
     {"subject": "Überweisung bestätigt ✓",
      "from": addr("bank@corp.example"),
      "toRecipients": [addr("juergen@corp.example")],
      "body": text("Transfer confirmed.\n")})

# ---- adjacent encoded-words joined, one folded onto the next line with a
#      tab, mixed with plain text before and after; lowercase charset/q ---
SUBJ = ("Fwd: =?UTF-8?Q?Gr=C3=BC?= =?utf-8?q?=C3=9Fe_aus?=\n"
        "\t" + bword(" München", "UTF-8") + " and more")
case("subject-adjacent-folded",
     env("anna@corp.example", "ben@corp.example"),
     M("""From: Anna <anna@corp.example>
To: Ben <ben@corp.example>
Subject: """, SUBJ, """
MIME-Version: 1.0
Content-Type: text/plain; charset=us-ascii

see below
"""),
     {"subject": "Fwd: Grüße aus München and more",
      "from": addr("anna@corp.example", "Anna"),
      "toRecipients": [addr("ben@corp.example", "Ben")],
      "body": text("see below\n")})

# ---- several charsets in one subject (ISO-8859-15 0xA4 is the euro) -----
SUBJ = ("Menu: " + qword("Café / ", "ISO-8859-1") + " "
        + bword("кофе / ", "KOI8-R") + "\n "
        + bword("コーヒー / ", "Shift_JIS") + " "
        + qword("€", "ISO-8859-15") + " (4 languages)")
assert "=A4" in SUBJ
same_decoding("コーヒー / ".encode("shift_jis"), ["shift_jis", "cp932"])
case("subject-multi-charset",
     env("cafe@corp.example", "guest@partner.example"),
     M("""From: cafe@corp.example
To: guest@partner.example
Subject: """, SUBJ, """
MIME-Version: 1.0
Content-Type: text/plain; charset=us-ascii

Today's coffee.
"""),
     {"subject": "Menu: Café / кофе / コーヒー / € (4 languages)",
      "from": addr("cafe@corp.example"),
      "toRecipients": [addr("guest@partner.example")],
      "body": text("Today's coffee.\n")})

# ---- unknown charset labels in encoded-words --------------------------
SUBJ = ("=?unknown-8bit?Q?Gr=FC=DFe?= from "
        + bword("Zürich", "x-unknown", "utf-8"))
case("subject-unknown-charset",
     env("relay@corp.example", "ops@corp.example"),
     M("""From: relay@corp.example
To: ops@corp.example
Subject: """, SUBJ, """
MIME-Version: 1.0
Content-Type: text/plain; charset=us-ascii

Greetings.
"""),
     {"subject": "Grüße from Zürich",
      "from": addr("relay@corp.example"),
      "toRecipients": [addr("ops@corp.example")],
      "body": text("Greetings.\n")})

# ---- raw UTF-8 in Subject and From name, UTF-8 8bit body ------------------
BODY = "Die Überweisung über 1.250,00 € ist bestätigt.\n"
case("subject-raw-utf8",
     env("bank@corp.example", "kunde@partner.example"),
     M(b"From: J\xc3\xbcrgen Bank <bank@corp.example>\r\n",
       "To: kunde@partner.example\n",
       T("Subject: Überweisung bestätigt – Ref. 4711 ✓\n", "utf-8"),
       """MIME-Version: 1.0
Content-Type: text/plain; charset=utf-8
Content-Transfer-Encoding: 8bit

""", T(BODY, "utf-8")),
     {"subject": "Überweisung bestätigt – Ref. 4711 ✓",
      "from": addr("bank@corp.example", "Jürgen Bank"),
      "toRecipients": [addr("kunde@partner.example")],
      "body": text(BODY)})

# ---- raw Windows-1252 bytes in Subject (invalid UTF-8) ----------------
case("subject-raw-cp1252",
     env("billing@corp.example", "mueller@partner.example"),
     M("""From: billing@corp.example
To: mueller@partner.example
""", T("Subject: Rechnung für Müller – 100 €\n", "cp1252"), """
Invoice attached (not really).
"""),
     {"subject": "Rechnung für Müller – 100 €",
      "from": addr("billing@corp.example"),
      "toRecipients": [addr("mueller@partner.example")],
      "body": text("Invoice attached (not really).\n")})

# ---- plain subject folded, leading/trailing whitespace trimmed ----------
case("subject-folded-plain",
     env("cfo@corp.example", "board@corp.example"),
     M("From: cfo@corp.example\n"
       "To: board@corp.example\n"
       "Subject:    Quarterly report\n"
       " for Q3 2024   \n"
       "\n"
       "Numbers follow.\n"),
     {"subject": "Quarterly report for Q3 2024",
      "from": addr("cfo@corp.example"),
      "toRecipients": [addr("board@corp.example")],
      "body": text("Numbers follow.\n")})

# ---- RFC 2231 filename with charset'lang'%-encoding -------------------------
PDF_MAERZ = make_pdf("Rechnung Maerz")
CV = T("Résumé de Jérôme\nExpérience: 12 ans\n", "iso-8859-1")
NAME1 = "Rechnung März 2024 – €.pdf"
BODY = "Two attachments with RFC 2231 names.\n"
case("rfc2231-filename-charset",
     env("hr@corp.example", "boss@corp.example"),
     M("""From: HR <hr@corp.example>
To: boss@corp.example
Subject: Documents
MIME-Version: 1.0
Content-Type: multipart/mixed; boundary="b2231"

""", mp("b2231", [
         part("Content-Type: text/plain; charset=us-ascii\n", BODY),
         part("Content-Type: application/pdf\n"
              "Content-Transfer-Encoding: base64\n"
              "Content-Disposition: attachment;\n"
              " filename*=UTF-8''" + pct(NAME1) + "\n", b64w(PDF_MAERZ)),
         part("Content-Type: text/plain; charset=iso-8859-1\n"
              "Content-Transfer-Encoding: 8bit\n"
              "Content-Disposition: attachment; filename*=iso-8859-1'fr'"
              + pct("résumé.txt", "iso-8859-1") + "\n", CV),
     ])),
     {"subject": "Documents",
      "from": addr("hr@corp.example", "HR"),
      "toRecipients": [addr("boss@corp.example")],
      "body": text(BODY),
      "attachments": [att(NAME1, "application/pdf", PDF_MAERZ),
                      att("résumé.txt", "text/plain", CV)]})

# ---- RFC 2231 continuations (encoded and plain) ----------------------------
PDF_JP = make_pdf("Annual report")
CSV = T("region,q1,q2\nnorth,10,12\nsouth,8,9\n")
S0, S1, S2 = "年次報告書", "_2024年度", ".pdf"
BODY = "Continuations.\n"
case("rfc2231-continuations",
     env("report@corp.example", "kacho@corp.example"),
     M("""From: report@corp.example
To: kacho@corp.example
Subject: Reports
MIME-Version: 1.0
Content-Type: multipart/mixed;
 boundary="cont-boundary"

""", mp("cont-boundary", [
         part("Content-Type: text/plain\n", BODY),
         part("Content-Type: application/pdf\n"
              "Content-Transfer-Encoding: base64\n"
              "Content-Disposition: attachment;\n"
              " filename*0*=UTF-8''" + pct(S0) + ";\n"
              " filename*1*=" + pct(S1) + ";\n"
              ' filename*2="' + S2 + '"\n', b64w(PDF_JP)),
         part('Content-Type: text/csv; name*0="Quarterly sales figures for the";\n'
              ' name*1=" northern region.csv"\n'
              "Content-Disposition: attachment\n", CSV),
     ])),
     {"subject": "Reports",
      "from": addr("report@corp.example"),
      "toRecipients": [addr("kacho@corp.example")],
      "body": text(BODY),
      "attachments": [
          att(S0 + S1 + S2, "application/pdf", PDF_JP),
          att("Quarterly sales figures for the northern region.csv",
              "text/csv", CSV)]})

# ---- RFC 2047 encoded-words inside quoted filename/name (Outlook) ----------
DOCX = make_zip([("[Content_Types].xml", b"<Types/>"),
                 ("word/document.xml", b"<w:document/>")])
JPG_KOELN = make_jpeg("koeln")
N1, N2 = "Angebot für Müller GmbH – ", "Überarbeitung.docx"
DOCX_CT = "application/vnd.openxmlformats-officedocument.wordprocessingml.document"
BODY = "Anbei das Angebot.\n"
case("rfc2047-filename",
     env("vertrieb@corp.example", "einkauf@partner.example"),
     M("""From: Vertrieb <vertrieb@corp.example>
To: einkauf@partner.example
Subject: Angebot
MIME-Version: 1.0
Content-Type: multipart/mixed;
	boundary="_004_rfc2047name_"

""", mp("_004_rfc2047name_", [
         part("Content-Type: text/plain; charset=\"us-ascii\"\n", BODY),
         part("Content-Type: " + DOCX_CT + ";\n"
              '\tname="' + bword(N1 + N2, "utf-8") + '"\n'
              "Content-Description: " + bword(N1 + N2, "utf-8") + "\n"
              "Content-Disposition: attachment;\n"
              '\tfilename="' + bword(N1, "utf-8") + " "
              + bword(N2, "utf-8") + '"; size=' + str(len(DOCX)) + ";\n"
              '\tcreation-date="Fri, 01 Mar 2024 12:00:00 GMT"\n'
              "Content-Transfer-Encoding: base64\n", b64w(DOCX)),
         part('Content-Type: image/jpeg; name="=?ISO-8859-1?Q?Foto_K=F6ln.jpg?="\n'
              "Content-Transfer-Encoding: base64\n", b64w(JPG_KOELN)),
     ])),
     {"subject": "Angebot",
      "from": addr("vertrieb@corp.example", "Vertrieb"),
      "toRecipients": [addr("einkauf@partner.example")],
      "body": text(BODY),
      "attachments": [att(N1 + N2, DOCX_CT, DOCX),
                      att("Foto Köln.jpg", "image/jpeg", JPG_KOELN)]})

# ---- name only in Content-Type (quoted and unquoted) ---------------------
PDF_INV = make_pdf("Invoice 4711")
PDF_UNQ = make_pdf("Unquoted")
BODY = "Invoices attached.\n"
case("name-only-in-content-type",
     env("erp@corp.example", "accounting@corp.example"),
     M("""From: ERP System <erp@corp.example>
To: accounting@corp.example
Subject: Invoices
MIME-Version: 1.0
Content-Type: multipart/mixed; boundary=erp-77

""", mp("erp-77", [
         part("Content-Type: text/plain\n", BODY),
         part('Content-Type: application/pdf; name="invoice-4711.pdf"\n'
              "Content-Disposition: attachment\n"
              "Content-Transfer-Encoding: base64\n", b64w(PDF_INV)),
         part("Content-Type: application/pdf; name=unquoted_name.pdf\n"
              "Content-Disposition: inline\n"
              "Content-Transfer-Encoding: base64\n", b64w(PDF_UNQ)),
     ])),
     {"subject": "Invoices",
      "from": addr("erp@corp.example", "ERP System"),
      "toRecipients": [addr("accounting@corp.example")],
      "body": text(BODY),
      "attachments": [att("invoice-4711.pdf", "application/pdf", PDF_INV),
                      att("unquoted_name.pdf", "application/pdf", PDF_UNQ)]})

# ---- paths, control characters, whitespace, empty-after-cleaning --------
PDF_DOC = make_pdf("doc")
PNG_PAGE = make_png(2, 2, (10, 200, 30))
PASSWD = T("not really a passwd file\n")
TXT_SP = T("spaced\n")
PDF_DIR = make_pdf("dir")
BODY = "Scans from the old workstation.\n"
case("path-in-filename",
     env("ws17@corp.example", "archive@corp.example"),
     M("""From: ws17@corp.example
To: archive@corp.example
Subject: Scans
MIME-Version: 1.0
Content-Type: multipart/mixed; boundary="path-b"

""", mp("path-b", [
         part("Content-Type: text/plain\n", BODY),
         part("Content-Type: application/pdf\n"
              "Content-Transfer-Encoding: base64\n"
              'Content-Disposition: attachment; filename="C:\\Scans\\doc.pdf"\n',
              b64w(PDF_DOC)),
         part("Content-Type: image/png\n"
              "Content-Transfer-Encoding: base64\n"
              'Content-Disposition: attachment; filename="/home/scan/out/2024/page 1.png"\n',
              b64w(PNG_PAGE)),
         part("Content-Type: text/plain\n"
              "Content-Disposition: attachment; filename*=UTF-8''..%2F..%2Fetc%2Fpasswd\n",
              PASSWD),
         part("Content-Type: text/plain\n"
              "Content-Disposition: attachment;"
              " filename*=UTF-8''%20%20spaced%09name%07.txt%20\n", TXT_SP),
         part("Content-Type: application/pdf\n"
              "Content-Transfer-Encoding: base64\n"
              'Content-Disposition: attachment; filename="scans/"\n',
              b64w(PDF_DIR)),
     ])),
     {"subject": "Scans",
      "from": addr("ws17@corp.example"),
      "toRecipients": [addr("archive@corp.example")],
      "body": text(BODY),
      "attachments": [att("doc.pdf", "application/pdf", PDF_DOC),
                      att("page 1.png", "image/png", PNG_PAGE),
                      att("passwd", "text/plain", PASSWD),
                      att("spacedname.txt", "text/plain", TXT_SP),
                      att("attachment-5.pdf", "application/pdf", PDF_DIR)]})

# ---- attachments without any name: generated names, every extension ------
U_PDF = make_pdf("unnamed")
U_PNG = make_png(1, 1, (255, 0, 0))
U_JPG = make_jpeg("unnamed")
U_TIF = make_tiff("unnamed")
U_TXT = T("plain text attachment\n")
U_HTML = T("<p>html attachment</p>\n")
U_CSV = T("a,b\n1,2\n")
U_ICS = T("BEGIN:VCALENDAR\nVERSION:2.0\nPRODID:-//corp//x//EN\n"
          "BEGIN:VEVENT\nUID:1@corp.example\nDTSTART:20240401T090000Z\n"
          "SUMMARY:Review\nEND:VEVENT\nEND:VCALENDAR\n")
U_EML = T("From: inner@corp.example\nTo: x@corp.example\nSubject: inner\n\n"
          "inner body\n")
U_ZIP = make_zip([("a.txt", b"zipped\n")])
U_BIN = prng("octet", 64)
U_UNK = prng("unknown", 48)
U_NODISP = prng("nodisp", 40)
BODY = "Thirteen unnamed attachments.\n"


def unnamed(ctype, data, enc="base64"):
    hd = "Content-Type: " + ctype + "\nContent-Disposition: attachment\n"
    if enc == "base64":
        return part(hd + "Content-Transfer-Encoding: base64\n", b64w(data))
    return part(hd, data)


case("unnamed-attachments-ext-table",
     env("robot@corp.example", "tester@corp.example"),
     M("""From: robot@corp.example
To: tester@corp.example
Subject: Unnamed
MIME-Version: 1.0
Content-Type: multipart/mixed; boundary="unnamed-0"

""", mp("unnamed-0", [
         part("Content-Type: text/plain; charset=us-ascii\n", BODY),
         unnamed("application/pdf", U_PDF),
         unnamed("Image/PNG", U_PNG),
         unnamed("image/jpeg", U_JPG),
         unnamed("image/gif", GIF),
         unnamed("image/tiff", U_TIF),
         unnamed("text/plain; charset=us-ascii", U_TXT, "7bit"),
         unnamed("text/html; charset=us-ascii", U_HTML, "7bit"),
         unnamed("text/csv", U_CSV, "7bit"),
         unnamed("text/calendar; method=PUBLISH", U_ICS, "7bit"),
         unnamed("message/rfc822", U_EML, "7bit"),
         unnamed("application/zip", U_ZIP),
         unnamed("application/octet-stream", U_BIN),
         unnamed("application/x-vendor-thing", U_UNK),
         part("Content-Type: application/octet-stream\n"
              "Content-Transfer-Encoding: base64\n", b64w(U_NODISP)),
     ])),
     {"subject": "Unnamed",
      "from": addr("robot@corp.example"),
      "toRecipients": [addr("tester@corp.example")],
      "body": text(BODY),
      "attachments": [
          att("attachment-1.pdf", "application/pdf", U_PDF),
          att("attachment-2.png", "image/png", U_PNG),
          att("attachment-3.jpg", "image/jpeg", U_JPG),
          att("attachment-4.gif", "image/gif", GIF),
          att("attachment-5.tif", "image/tiff", U_TIF),
          att("attachment-6.txt", "text/plain", U_TXT),
          att("attachment-7.html", "text/html", U_HTML),
          att("attachment-8.csv", "text/csv", U_CSV),
          att("attachment-9.ics", "text/calendar", U_ICS),
          att("attachment-10.eml", "message/rfc822", U_EML),
          att("attachment-11.zip", "application/zip", U_ZIP),
          att("attachment-12.bin", "application/octet-stream", U_BIN),
          att("attachment-13.bin", "application/x-vendor-thing", U_UNK),
          att("attachment-14.bin", "application/octet-stream", U_NODISP)]})

# ---- multipart/alternative text + html (Thunderbird style) ------------------
PLAIN = "Hi Tom,\n\nthe build is *green* again.\n\n-- \nJana\n"
HTML = ("<html>\n  <head>\n    <meta http-equiv=\"content-type\" content=\"text/html; charset=UTF-8\">\n"
        "  </head>\n  <body>\n    <p>Hi Tom,</p>\n    <p>the build is <b>green</b> again – ✓</p>\n"
        "    <div class=\"moz-signature\">-- <br>Jana</div>\n  </body>\n</html>\n")
case("alternative-text-html",
     env("jana@corp.example", "tom@corp.example"),
     M("""Message-ID: <b5c1d2e3-aaaa-4bbb-8ccc-0123456789ab@corp.example>
Date: Wed, 6 Mar 2024 11:22:33 +0100
MIME-Version: 1.0
User-Agent: Mozilla Thunderbird
Content-Language: en-US
To: Tom <tom@corp.example>
From: Jana <jana@corp.example>
Subject: Build status
Content-Type: multipart/alternative;
 boundary="------------A1B2C3D4E5F6A7B8C9D0E1F2"

This is a multi-part message in MIME format.
""", mp("------------A1B2C3D4E5F6A7B8C9D0E1F2", [
         part("Content-Type: text/plain; charset=UTF-8; format=flowed\n"
              "Content-Transfer-Encoding: 7bit\n", PLAIN),
         part("Content-Type: text/html; charset=UTF-8\n"
              "Content-Transfer-Encoding: 8bit\n", T(HTML, "utf-8")),
     ])),
     {"subject": "Build status",
      "from": addr("jana@corp.example", "Jana"),
      "toRecipients": [addr("tom@corp.example", "Tom")],
      "internetMessageId": "<b5c1d2e3-aaaa-4bbb-8ccc-0123456789ab@corp.example>",
      "body": html(HTML)})

# ---- Outlook: alternative, QP windows-1252, meta charset left alone,
#      empty-valued X-MS headers, lowercase x- header ----------------------
QP_PLAIN = ("Hi Peter,\n\nI=92ll send the figures =96 all of them =96 tomorrow.\n\n"
            "Thanks,\nSusan\n")
QP_HTML = ('<html xmlns:o=3D"urn:schemas-microsoft-com:office:office">\n'
           '<head>\n<meta http-equiv=3D"Content-Type" content=3D"text/html; charset=3D=\n'
           'windows-1252">\n</head>\n'
           '<body lang=3D"EN-US" link=3D"#0563C1">\n'
           '<div class=3D"WordSection1">\n'
           '<p class=3D"MsoNormal">Hi Peter,<o:p></o:p></p>\n'
           '<p class=3D"MsoNormal">I=92ll send the figures =96 all of them =96 tomorro=\n'
           'w.<o:p></o:p></p>\n'
           '<p class=3D"MsoNormal">Thanks,<br>Susan<o:p></o:p></p>\n'
           '</div>\n</body>\n</html>\n')
HTML = ('<html xmlns:o="urn:schemas-microsoft-com:office:office">\n'
        '<head>\n<meta http-equiv="Content-Type" content="text/html; charset=windows-1252">\n'
        '</head>\n'
        '<body lang="EN-US" link="#0563C1">\n'
        '<div class="WordSection1">\n'
        '<p class="MsoNormal">Hi Peter,<o:p></o:p></p>\n'
        '<p class="MsoNormal">I’ll send the figures – all of them – tomorrow.<o:p></o:p></p>\n'
        '<p class="MsoNormal">Thanks,<br>Susan<o:p></o:p></p>\n'
        '</div>\n</body>\n</html>\n')
case("outlook-alternative-qp",
     env("susan@corp.example", "peter@corp.example"),
     M("""From: Susan Miller <susan@corp.example>
To: Peter Brown <peter@corp.example>
Subject: Figures
Thread-Topic: Figures
Thread-Index: AdpvR4Hc3Hq1Q2J1TxCkCw==
Date: Thu, 7 Mar 2024 08:30:00 +0000
Message-ID: <DB9PR01MB1234ABCD5678EF90@DB9PR01MB1234.eurprd01.prod.outlook.example>
Accept-Language: en-US
Content-Language: en-US
X-MS-Has-Attach:
X-MS-TNEF-Correlator:\x20
x-originating-ip: [10.0.0.5]
Content-Type: multipart/alternative;
	boundary="_000_DB9PR01MB1234ABCD5678EF90DB9PR01MB1234eurp_"
MIME-Version: 1.0

""", mp("_000_DB9PR01MB1234ABCD5678EF90DB9PR01MB1234eurp_", [
         part('Content-Type: text/plain; charset="Windows-1252"\n'
              "Content-Transfer-Encoding: quoted-printable\n", QP_PLAIN),
         part('Content-Type: text/html; charset="Windows-1252"\n'
              "Content-Transfer-Encoding: quoted-printable\n", QP_HTML),
     ])),
     {"subject": "Figures",
      "from": addr("susan@corp.example", "Susan Miller"),
      "toRecipients": [addr("peter@corp.example", "Peter Brown")],
      "internetMessageId":
          "<DB9PR01MB1234ABCD5678EF90@DB9PR01MB1234.eurprd01.prod.outlook.example>",
      "internetMessageHeaders": [hdr("X-MS-Has-Attach", ""),
                                 hdr("X-MS-TNEF-Correlator", ""),
                                 hdr("x-originating-ip", "[10.0.0.5]")],
      "body": html(HTML)})

# ---- scanner: no MIME-Version, no spaces after colons, unquoted boundary,
#      uppercase media type/encoding/disposition, 72-column base64 -------
PDF_SCAN = make_pdf("SCAN0001 page 1 of 2")
case("scanner-mixed-pdf",
     env("scanner@corp.example", "alice@corp.example"),
     M("""Received: from mfp-4020.corp.example ([10.1.2.3]) by relay.corp.example
 with SMTP; Tue, 5 Mar 2024 10:11:12 +0100
Date:Tue, 05 Mar 2024 10:11:12 +0100
From:scanner@corp.example
To:alice@corp.example
Subject:Scanned from MFP-4020
Content-Type:Multipart/Mixed;boundary=SCAN_BOUNDARY_0001

--SCAN_BOUNDARY_0001
Content-Type:text/plain;charset=US-ASCII
Content-Transfer-Encoding:7BIT

Scan job 0001, 2 pages.
--SCAN_BOUNDARY_0001
Content-Type:Application/PDF;name="SCAN0001.PDF"
Content-Transfer-Encoding:BASE64
Content-Disposition:ATTACHMENT;filename="SCAN0001.PDF"

""", b64w(PDF_SCAN, 72), """
--SCAN_BOUNDARY_0001--
"""),
     {"subject": "Scanned from MFP-4020",
      "from": addr("scanner@corp.example"),
      "toRecipients": [addr("alice@corp.example")],
      "body": text("Scan job 0001, 2 pages."),
      "attachments": [att("SCAN0001.PDF", "application/pdf", PDF_SCAN)]})

# ---- multipart/related: referenced images inline, one not referenced ------
PNG_LOGO = make_png(3, 2, (0, 80, 160))
PNG_BANNER = make_png(4, 1, (250, 250, 0))
HTML = ("<html>\n<head><meta charset=\"utf-8\"></head>\n<body>\n"
        "<p>Dear customer,</p>\n"
        "<p><img src=\"cid:logo@corp.example\" alt=\"Corp logo\"></p>\n"
        "<p>Sales chart: <img src=cid:chart.gif@01DA0000 width=120 height=60></p>\n"
        "<p>Kind regards</p>\n</body>\n</html>\n")
case("related-inline-images",
     env("newsletter@corp.example", "customer@partner.example"),
     M("""From: Corp Newsletter <newsletter@corp.example>
To: customer@partner.example
Subject: March newsletter
MIME-Version: 1.0
Content-Type: multipart/related; type="text/html";
 boundary="----=_Part_1_20240308"

""", mp("----=_Part_1_20240308", [
         part("Content-Type: text/html; charset=utf-8\n"
              "Content-Transfer-Encoding: 7bit\n", HTML),
         part('Content-Type: image/png; name="logo.png"\n'
              "Content-Transfer-Encoding: base64\n"
              "Content-ID: <logo@corp.example>\n"
              'Content-Disposition: inline; filename="logo.png"\n',
              b64w(PNG_LOGO)),
         part("Content-Type: image/gif\n"
              "Content-Transfer-Encoding: base64\n"
              "Content-ID: <chart.gif@01DA0000>\n", b64w(GIF)),
         part('Content-Type: image/png; name="banner.png"\n'
              "Content-Transfer-Encoding: base64\n"
              "Content-ID: <banner@corp.example>\n"
              "Content-Disposition: inline\n", b64w(PNG_BANNER)),
     ])),
     {"subject": "March newsletter",
      "from": addr("newsletter@corp.example", "Corp Newsletter"),
      "toRecipients": [addr("customer@partner.example")],
      "body": html(HTML),
      "attachments": [
          att("logo.png", "image/png", PNG_LOGO, cid="logo@corp.example"),
          att("attachment-2.gif", "image/gif", GIF, cid="chart.gif@01DA0000"),
          att("banner.png", "image/png", PNG_BANNER)]})

# ---- cid matching: whole id, case-sensitive, Content-ID without <> ------
PNG_I1 = make_png(2, 1, (1, 2, 3))
PNG_THUMB = make_png(1, 2, (4, 5, 6))
JPG_LOWER = make_jpeg("photo-lower")
JPG_UPPER = make_jpeg("photo-upper")
HTML = ("<html><body>\n"
        "<img src=\"cid:image001.png@01DA2B3C.4D5E6F70\" width=\"2\" height=\"1\">\n"
        "<img src=\"cid:Photo@corp.example\">\n"
        "<img src=\"cid:spacer@corp.example\">\n"
        "</body></html>\n")
case("related-cid-traps",
     env("marketing@corp.example", "lead@partner.example"),
     M("""From: marketing@corp.example
To: lead@partner.example
Subject: cid matching
MIME-Version: 1.0
Content-Type: multipart/related; boundary="cid-traps"

""", mp("cid-traps", [
         part("Content-Type: text/html; charset=us-ascii\n", HTML),
         part("Content-Type: image/png\n"
              "Content-Transfer-Encoding: base64\n"
              "Content-ID: <image001.png@01DA2B3C.4D5E6F70>\n", b64w(PNG_I1)),
         part("Content-Type: image/png\n"
              "Content-Transfer-Encoding: base64\n"
              "Content-ID: <image001>\n"
              'Content-Disposition: inline; filename="image001-thumb.png"\n',
              b64w(PNG_THUMB)),
         part("Content-Type: image/jpeg\n"
              "Content-Transfer-Encoding: base64\n"
              "Content-ID: <photo@corp.example>\n"
              'Content-Disposition: inline; filename="photo.jpg"\n',
              b64w(JPG_LOWER)),
         part("Content-Type: image/jpeg\n"
              "Content-Transfer-Encoding: base64\n"
              "Content-ID: <Photo@corp.example>\n"
              'Content-Disposition: inline; filename="photo2.jpg"\n',
              b64w(JPG_UPPER)),
         part("Content-Type: image/gif\n"
              "Content-Transfer-Encoding: base64\n"
              "Content-ID: spacer@corp.example\n", b64w(GIF)),
     ])),
     {"subject": "cid matching",
      "from": addr("marketing@corp.example"),
      "toRecipients": [addr("lead@partner.example")],
      "body": html(HTML),
      "attachments": [
          att("attachment-1.png", "image/png", PNG_I1,
              cid="image001.png@01DA2B3C.4D5E6F70"),
          att("image001-thumb.png", "image/png", PNG_THUMB),
          att("photo.jpg", "image/jpeg", JPG_LOWER),
          att("photo2.jpg", "image/jpeg", JPG_UPPER, cid="Photo@corp.example"),
          att("attachment-5.gif", "image/gif", GIF, cid="spacer@corp.example")]})

# ---- nesting, 5 levels: mixed > mixed (disclaimer wrapper) > alternative
#      > related > html + image; disclaimer text and a PDF ---------------
PNG_SIG = make_png(2, 2, (200, 0, 0))
PDF_REP = make_pdf("Report")
PLAIN = "Please review the attached report.\n\nMark\n"
HTML = ("<html><body><p>Please review the attached report.</p>\n"
        "<p>Mark<br><img src=\"cid:sig@corp.example\"></p></body></html>\n")
DISCLAIMER = ("This e-mail is confidential. If you are not the intended recipient,\n"
              "please delete it.\n")
ALT = mp("alt-3", [
    part("Content-Type: text/plain; charset=us-ascii\n", PLAIN),
    part('Content-Type: multipart/related; boundary="rel-4"; type="text/html"\n',
         mp("rel-4", [
             part("Content-Type: text/html; charset=us-ascii\n", HTML),
             part('Content-Type: image/png; name="sig.png"\n'
                  "Content-Transfer-Encoding: base64\n"
                  "Content-ID: <sig@corp.example>\n"
                  'Content-Disposition: inline; filename="sig.png"\n',
                  b64w(PNG_SIG)),
         ])),
])
case("nested-five-levels",
     env("mark@corp.example", "review@corp.example"),
     M("""From: Mark <mark@corp.example>
To: review@corp.example
Subject: Report for review
MIME-Version: 1.0
Content-Type: multipart/mixed; boundary="outer-1"

""", mp("outer-1", [
         part('Content-Type: multipart/mixed; boundary="inner-2"\n',
              mp("inner-2", [
                  part('Content-Type: multipart/alternative; boundary="alt-3"\n',
                       ALT),
                  part("Content-Type: text/plain; charset=us-ascii\n"
                       "Content-Disposition: inline\n", DISCLAIMER),
              ])),
         part('Content-Type: application/pdf; name="report.pdf"\n'
              "Content-Transfer-Encoding: base64\n"
              'Content-Disposition: attachment; filename="report.pdf"\n',
              b64w(PDF_REP)),
     ])),
     {"subject": "Report for review",
      "from": addr("mark@corp.example", "Mark"),
      "toRecipients": [addr("review@corp.example")],
      "body": html(HTML),
      "attachments": [
          att("sig.png", "image/png", PNG_SIG, cid="sig@corp.example"),
          att("attachment-2.txt", "text/plain", T(DISCLAIMER)),
          att("report.pdf", "application/pdf", PDF_REP)]})

# ---- message/rfc822 with filenames (inner HTML not walked) -----------------
INNER1 = M("""From: Finance <finance@corp.example>
To: team@corp.example
Subject: Budget 2025
Date: Mon, 4 Mar 2024 08:00:00 +0100
Message-ID: <inner-1@corp.example>
MIME-Version: 1.0
Content-Type: multipart/alternative; boundary="inner-alt"

""", mp("inner-alt", [
    part("Content-Type: text/plain; charset=us-ascii\n", "Budget attached.\n"),
    part("Content-Type: text/html; charset=us-ascii\n",
         "<p>Budget <b>attached</b>.</p>\n"),
]))
INNER2 = M("""From: a@partner.example
To: b@partner.example
Subject: original

Original text.
""")
BODY = "See the forwarded messages.\n"
case("rfc822-attachment-with-filename",
     env("fwd@corp.example", "boss@corp.example"),
     M("""From: fwd@corp.example
To: boss@corp.example
Subject: Fwd: Budget 2025
MIME-Version: 1.0
Content-Type: multipart/mixed; boundary="fwd-b"

""", mp("fwd-b", [
         part("Content-Type: text/plain; charset=us-ascii\n", BODY),
         part("Content-Type: message/rfc822\n"
              'Content-Disposition: attachment; filename="Re: Budget 2025"\n',
              INNER1),
         part('Content-Type: message/rfc822; name="original.EML"\n'
              'Content-Disposition: attachment; filename="original.EML"\n',
              INNER2),
     ])),
     {"subject": "Fwd: Budget 2025",
      "from": addr("fwd@corp.example"),
      "toRecipients": [addr("boss@corp.example")],
      "body": text(BODY),
      "attachments": [
          att("Re: Budget 2025.eml", "message/rfc822", INNER1),
          att("original.EML", "message/rfc822", INNER2)]})

# ---- message/rfc822 without filename, name in Content-Type, inline ---------
INNER3 = M("""From: x@partner.example
To: y@partner.example
Subject: first
Content-Type: text/html; charset=us-ascii

<p>first inner</p>
""")
INNER4 = M("""From: x@partner.example
To: y@partner.example
Subject: second

second inner
""")
INNER5 = M("""From: x@partner.example
To: y@partner.example
Subject: third

third inner
""")
BODY = "Three forwarded messages.\n"
case("rfc822-attachment-without-filename",
     env("fwd@corp.example", "boss@corp.example"),
     M("""From: fwd@corp.example
To: boss@corp.example
Subject: Fwd: several
MIME-Version: 1.0
Content-Type: multipart/mixed; boundary="fwd-c"

""", mp("fwd-c", [
         part("Content-Type: text/plain; charset=us-ascii\n", BODY),
         part("Content-Type: message/rfc822\n", INNER3),
         part('Content-Type: message/rfc822; name="Meeting notes"\n', INNER4),
         part("Content-Type: message/rfc822\nContent-Disposition: inline\n",
              INNER5),
     ])),
     {"subject": "Fwd: several",
      "from": addr("fwd@corp.example"),
      "toRecipients": [addr("boss@corp.example")],
      "body": text(BODY),
      "attachments": [
          att("attachment-1.eml", "message/rfc822", INNER3),
          att("Meeting notes.eml", "message/rfc822", INNER4),
          att("attachment-3.eml", "message/rfc822", INNER5)]})

# ---- multipart/digest: parts without Content-Type are message/rfc822 ----
D1 = M("""From: alice@lists.example
Subject: First post
Date: Mon, 4 Mar 2024 07:00:00 +0000

Hello list.
""")
D2 = M("""From: bob@lists.example
Subject: Re: First post
Content-Type: text/html; charset=us-ascii

<p>Hi Alice</p>
""")
D3 = T("End of digest.\n")
INTRO = "Today's topics:\n  1. First post\n  2. Re: First post\n"
case("multipart-digest",
     env("list-bounces@lists.example", "member@corp.example"),
     M("""From: list@lists.example
To: member@corp.example
Subject: List digest, Vol 3, Issue 7
MIME-Version: 1.0
Content-Type: multipart/mixed; boundary="digest-outer"

""", mp("digest-outer", [
         part("Content-Type: text/plain; charset=us-ascii\n"
              "Content-Description: Today's Topics (2 messages)\n", INTRO),
         part('Content-Type: multipart/digest; boundary="digest-inner"\n',
              mp("digest-inner", [
                  part("", D1),
                  part("", D2),
                  part("Content-Type: text/plain; charset=us-ascii\n", D3),
              ])),
     ])),
     {"subject": "List digest, Vol 3, Issue 7",
      "from": addr("list@lists.example"),
      "toRecipients": [addr("member@corp.example")],
      "body": text(INTRO),
      "attachments": [
          att("attachment-1.eml", "message/rfc822", D1),
          att("attachment-2.eml", "message/rfc822", D2),
          att("attachment-3.txt", "text/plain", D3)]})

# ---- text/plain attachment with filename comes first; raw bytes kept ------
#      (Content-Disposition: attachment: a first text part that is inline
#      with a file name is the body, see text-inline-filename-first-then-plain)
LOG = T("build 1234: Prüfung bestanden\nwarnings: 0\n", "iso-8859-1")
BODY = "The build log is attached.\n"
case("text-attachment-first",
     env("ci@corp.example", "dev@corp.example"),
     M("""From: CI <ci@corp.example>
To: dev@corp.example
Subject: Build 1234
MIME-Version: 1.0
Content-Type: multipart/mixed; boundary="ci-b"

""", mp("ci-b", [
         part('Content-Type: text/plain; charset=iso-8859-1; name="build.log"\n'
              "Content-Transfer-Encoding: 8bit\n"
              'Content-Disposition: attachment; filename="build.log"\n', LOG),
         part("Content-Type: text/plain; charset=us-ascii\n", BODY),
     ])),
     {"subject": "Build 1234",
      "from": addr("ci@corp.example", "CI"),
      "toRecipients": [addr("dev@corp.example")],
      "body": text(BODY),
      "attachments": [att("build.log", "text/plain", LOG)]})

# ---- the same with Content-Disposition: inline: the first displayable
#      part is the body despite its file name (RFC 8621 4.1.4); the second
#      text part is then an attachment -----------------------------------
case("text-inline-filename-first-then-plain",
     env("ci@corp.example", "dev@corp.example"),
     M("""From: CI <ci@corp.example>
To: dev@corp.example
Subject: Build 1234
MIME-Version: 1.0
Content-Type: multipart/mixed; boundary="ci-b"

""", mp("ci-b", [
         part('Content-Type: text/plain; charset=iso-8859-1; name="build.log"\n'
              "Content-Transfer-Encoding: 8bit\n"
              'Content-Disposition: inline; filename="build.log"\n', LOG),
         part("Content-Type: text/plain; charset=us-ascii\n", BODY),
     ])),
     {"subject": "Build 1234",
      "from": addr("ci@corp.example", "CI"),
      "toRecipients": [addr("dev@corp.example")],
      "body": text("build 1234: Prüfung bestanden\nwarnings: 0\n"),
      "attachments": [att("attachment-1.txt", "text/plain", T(BODY))]})

# ---- two inline text parts: the second becomes an attachment ------------
P1 = "Part one of the message.\n"
P2 = T("Part two, appended by the list software.\n")
case("two-inline-text-parts",
     env("list@corp.example", "member@corp.example"),
     M("""From: Poster <poster@corp.example>
To: list@corp.example
Subject: Two parts
MIME-Version: 1.0
Content-Type: multipart/mixed; boundary="two-b"

""", mp("two-b", [
         part("Content-Type: text/plain; charset=us-ascii\n", P1),
         part("Content-Type: text/plain; charset=us-ascii\n"
              "Content-Disposition: inline\n", P2),
     ])),
     {"subject": "Two parts",
      "from": addr("poster@corp.example", "Poster"),
      "bccRecipients": [addr("member@corp.example")],
      "body": text(P1),
      "attachments": [att("attachment-1.txt", "text/plain", P2)]})

# ---- HTML only (base64, charset label "utf8") ------------------------------
HTML = ("<!DOCTYPE html>\n<html><body>\n<h1>Alert</h1>\n"
        "<p>Disk usage on <code>db01</code> is at 93&nbsp;% – résumé.</p>\n"
        "</body></html>\n")
case("html-only",
     env("alerts@corp.example", "ops@corp.example"),
     M("""From: Alerts <alerts@corp.example>
To: ops@corp.example
Subject: [ALERT] disk usage
MIME-Version: 1.0
Content-Type: text/html; charset=utf8
Content-Transfer-Encoding: base64

""", b64w(T(HTML, "utf-8"))),
     {"subject": "[ALERT] disk usage",
      "from": addr("alerts@corp.example", "Alerts"),
      "toRecipients": [addr("ops@corp.example")],
      "body": html(HTML)})

# ---- no text part at all: multipart/mixed with a single PDF ----------------
PDF_ONLY = make_pdf("only pdf")
case("only-pdf-mixed",
     env("scanner@corp.example", "bob@corp.example"),
     M("""From: "MFP 2nd floor" <scanner@corp.example>
To: bob@corp.example
Subject: Scan
MIME-Version: 1.0
Content-Type: multipart/mixed; boundary="==only-pdf=="

""", mp("==only-pdf==", [
         part('Content-Type: application/pdf; name="scan_0002.pdf"\n'
              "Content-Transfer-Encoding: base64\n"
              'Content-Disposition: attachment; filename="scan_0002.pdf"\n',
              b64w(PDF_ONLY, 64)),
     ])),
     {"subject": "Scan",
      "from": addr("scanner@corp.example", "MFP 2nd floor"),
      "toRecipients": [addr("bob@corp.example")],
      "body": text(""),
      "attachments": [att("scan_0002.pdf", "application/pdf", PDF_ONLY)]})

# ---- single-part application/pdf message ---------------------------------
PDF_SINGLE = make_pdf("single part")
case("only-pdf-single-part",
     env("fax@corp.example", "bob@corp.example"),
     M("""From: fax@corp.example
To: bob@corp.example
Subject: Fax from +49 30 1234567
MIME-Version: 1.0
Content-Type: application/pdf; name="fax.pdf"
Content-Transfer-Encoding: base64

""", b64w(PDF_SINGLE)),
     {"subject": "Fax from +49 30 1234567",
      "from": addr("fax@corp.example"),
      "toRecipients": [addr("bob@corp.example")],
      "body": text(""),
      "attachments": [att("fax.pdf", "application/pdf", PDF_SINGLE)]})

# ---- single-part text/csv attachment (cron report) ------------------------
CSV_REP = "host,free_gb\ndb01,12\nweb01,40\n"
case("single-part-csv-attachment",
     env("cron@corp.example", "ops@corp.example"),
     M("""From: cron@corp.example
To: ops@corp.example
Subject: disk report
MIME-Version: 1.0
Content-Type: text/csv; charset=us-ascii; name="report.csv"
Content-Disposition: attachment; filename="report.csv"

""", CSV_REP),
     {"subject": "disk report",
      "from": addr("cron@corp.example"),
      "toRecipients": [addr("ops@corp.example")],
      "body": text(""),
      "attachments": [att("report.csv", "text/csv", T(CSV_REP))]})

# ---- Bcc only: To: undisclosed-recipients:; ---------------------------------
BODY = "Hidden recipients.\n"
case("bcc-only-undisclosed",
     env("news@corp.example", "x@partner.example", "y@partner.example"),
     M("""From: News <news@corp.example>
To: undisclosed-recipients:;
Subject: Newsletter
MIME-Version: 1.0
Content-Type: text/plain; charset=us-ascii

""", BODY),
     {"subject": "Newsletter",
      "from": addr("news@corp.example", "News"),
      "bccRecipients": [addr("x@partner.example"), addr("y@partner.example")],
      "body": text(BODY)})

# ---- envelope authoritative: header-only addresses dropped, envelope order,
#      quoted comma and escaped quotes in names ----------------------------
BODY = "Envelope decides.\n"
case("rcpts-envelope-authoritative",
     env("pm@corp.example", "mary@corp.example", "jane@corp.example",
         "outsider@partner.example", "john.doe@corp.example"),
     M("""From: PM <pm@corp.example>
To: "Doe, John" <john.doe@corp.example>, Jane Roe <jane@corp.example>,
 boss@corp.example
Cc: "Mary \\"MJ\\" Smith" <mary@corp.example>, team-lead@corp.example
Subject: Plan
MIME-Version: 1.0
Content-Type: text/plain; charset=us-ascii

""", BODY),
     {"subject": "Plan",
      "from": addr("pm@corp.example", "PM"),
      "toRecipients": [addr("jane@corp.example", "Jane Roe"),
                       addr("john.doe@corp.example", "Doe, John")],
      "ccRecipients": [addr("mary@corp.example", 'Mary "MJ" Smith')],
      "bccRecipients": [addr("outsider@partner.example")],
      "body": text(BODY)})

# ---- case-insensitive matching, envelope spelling kept -------------------
BODY = "Case test.\n"
case("rcpts-case-insensitive",
     env("sender@corp.example", "Alice@Wonderland.EXAMPLE", "BJORN@example.net"),
     M("""From: sender@corp.example
To: Alice Liddell <alice@wonderland.example>
CC: =?UTF-8?Q?Bj=C3=B6rn?= <bjorn@Example.NET>
Subject: Case
MIME-Version: 1.0
Content-Type: text/plain; charset=us-ascii

""", BODY),
     {"subject": "Case",
      "from": addr("sender@corp.example"),
      "toRecipients": [addr("Alice@Wonderland.EXAMPLE", "Alice Liddell")],
      "ccRecipients": [addr("BJORN@example.net", "Björn")],
      "body": text(BODY)})

# ---- duplicate envelope recipients; an address in both To and Cc -------
BODY = "Duplicates.\n"
case("rcpts-duplicates",
     env("sender@corp.example", "carol@corp.example", "Carol@Corp.Example",
         "dave@corp.example", "carol@corp.example", "DAVE@corp.example",
         "erin@corp.example"),
     M("""From: sender@corp.example
To: Carol <carol@corp.example>
Cc: Carol Again <CAROL@corp.example>, Dave <dave@corp.example>
Subject: Dups
MIME-Version: 1.0
Content-Type: text/plain; charset=us-ascii

""", BODY),
     {"subject": "Dups",
      "from": addr("sender@corp.example"),
      "toRecipients": [addr("carol@corp.example", "Carol")],
      "ccRecipients": [addr("dave@corp.example", "Dave")],
      "bccRecipients": [addr("erin@corp.example")],
      "body": text(BODY)})

# ---- group syntax in To and Cc ---------------------------------------------
BODY = "Groups.\n"
case("rcpts-group-syntax",
     env("sender@corp.example", "b@corp.example", "c@corp.example",
         "d@corp.example", "a@corp.example"),
     M("""From: sender@corp.example
To: Team: a@corp.example, "B Bee" <b@corp.example>;, c@corp.example
Cc: Empty group:;, Dee <d@corp.example>
Subject: Groups
MIME-Version: 1.0
Content-Type: text/plain; charset=us-ascii

""", BODY),
     {"subject": "Groups",
      "from": addr("sender@corp.example"),
      "toRecipients": [addr("b@corp.example", "B Bee"),
                       addr("c@corp.example"),
                       addr("a@corp.example")],
      "ccRecipients": [addr("d@corp.example", "Dee")],
      "body": text(BODY)})

# ---- null sender: a Postfix-style bounce (multipart/report) ---------------
NOTICE = ("This is the mail system at host mx.example.net.\n\n"
          "I'm sorry to have to inform you that your message could not\n"
          "be delivered to one or more recipients.\n\n"
          "<nobody@partner.example>: host mx.partner.example said: 550 5.1.1\n"
          "    User unknown\n")
DSN = T("Reporting-MTA: dns; mx.example.net\n"
        "X-Postfix-Queue-ID: 4B1C2D3E\n"
        "Arrival-Date: Fri, 8 Mar 2024 09:00:00 +0100 (CET)\n\n"
        "Final-Recipient: rfc822; nobody@partner.example\n"
        "Original-Recipient: rfc822;nobody@partner.example\n"
        "Action: failed\nStatus: 5.1.1\n"
        "Diagnostic-Code: smtp; 550 5.1.1 User unknown\n")
ORIG = T("From: sender@corp.example\nTo: nobody@partner.example\n"
         "Subject: hello\nMessage-ID: <orig-1@corp.example>\n")
case("null-sender-dsn",
     env("", "sender@corp.example"),
     M("""Date: Fri, 8 Mar 2024 09:00:05 +0100 (CET)
From: Mail Delivery System <MAILER-DAEMON@mx.example.net>
Subject: Undelivered Mail Returned to Sender
To: sender@corp.example
Auto-Submitted: auto-replied
MIME-Version: 1.0
Content-Type: multipart/report; report-type=delivery-status;
	boundary="4B1C2D3E.1709884805/mx.example.net"
Content-Transfer-Encoding: 8bit
Message-Id: <20240308080005.5A6B7C8D@mx.example.net>

This is a MIME-encapsulated message.
""", mp("4B1C2D3E.1709884805/mx.example.net", [
         part("Content-Description: Notification\n"
              "Content-Type: text/plain; charset=us-ascii\n", NOTICE),
         part("Content-Description: Delivery report\n"
              "Content-Type: message/delivery-status\n", DSN),
         part("Content-Description: Undelivered Message Headers\n"
              "Content-Type: text/rfc822-headers\n", ORIG),
     ])),
     {"subject": "Undelivered Mail Returned to Sender",
      "from": addr("MAILER-DAEMON@mx.example.net", "Mail Delivery System"),
      "toRecipients": [addr("sender@corp.example")],
      "internetMessageId": "<20240308080005.5A6B7C8D@mx.example.net>",
      "body": text(NOTICE),
      "attachments": [
          att("attachment-1.bin", "message/delivery-status", DSN),
          att("attachment-2.bin", "text/rfc822-headers", ORIG)]})

# ---- address-like display names (From, To, encoded Cc) -------------------
PDF_ADDR = make_pdf("address-like")
case("from-address-like-name",
     env("scanner@corp.example", "alice@corp.example", "carol@corp.example"),
     M("""From: "scanner@corp.example" <scanner@corp.example>
To: "alice@corp.example" <alice@corp.example>
Cc: =?UTF-8?Q?carol=40corp.example?= <carol@corp.example>
Subject: Scan to e-mail
MIME-Version: 1.0
Content-Type: multipart/mixed; boundary="addr-like"

""", mp("addr-like", [
         part('Content-Type: application/pdf; name="scan.pdf"\n'
              "Content-Transfer-Encoding: base64\n", b64w(PDF_ADDR)),
     ])),
     {"subject": "Scan to e-mail",
      "from": addr("scanner@corp.example"),
      "toRecipients": [addr("alice@corp.example")],
      "ccRecipients": [addr("carol@corp.example")],
      "body": text(""),
      "attachments": [att("scan.pdf", "application/pdf", PDF_ADDR)]})

# ---- From display name RFC 2047 encoded; To Q-encoded ----------------------
BODY = "Encoded names.\n"
case("from-encoded-name",
     env("juergen@corp.example", "francois@partner.example"),
     M("From: " + bword("Jürgen Groß", "UTF-8") + " <juergen@corp.example>\n"
       """To: =?ISO-8859-1?Q?Fran=E7ois_Lef=E8vre?= <francois@partner.example>
Subject: Namen
MIME-Version: 1.0
Content-Type: text/plain; charset=us-ascii

""", BODY),
     {"subject": "Namen",
      "from": addr("juergen@corp.example", "Jürgen Groß"),
      "toRecipients": [addr("francois@partner.example", "François Lefèvre")],
      "body": text(BODY)})

# ---- From with several addresses: the first one ---------------------------
BODY = "Two authors.\n"
case("from-multiple-addresses",
     env("alice@corp.example", "board@corp.example"),
     M("""From: Alice Author <alice@corp.example>, Bob Author <bob@corp.example>
Sender: alice@corp.example
To: board@corp.example
Subject: Joint statement
MIME-Version: 1.0
Content-Type: text/plain; charset=us-ascii

""", BODY),
     {"subject": "Joint statement",
      "from": addr("alice@corp.example", "Alice Author"),
      "toRecipients": [addr("board@corp.example")],
      "body": text(BODY)})

# ---- Reply-To with several addresses ------------------------------------
BODY = "Reply to all of us.\n"
case("reply-to-multiple",
     env("noreply@corp.example", "customer@partner.example"),
     M("""From: Corp <noreply@corp.example>
To: customer@partner.example
Reply-To: Support <support@corp.example>, =?UTF-8?Q?S=C3=B8ren?= <Soren@Corp.Example>,
	"helpdesk@corp.example" <helpdesk@corp.example>, tickets@corp.example
Subject: Your ticket
MIME-Version: 1.0
Content-Type: text/plain; charset=us-ascii

""", BODY),
     {"subject": "Your ticket",
      "from": addr("noreply@corp.example", "Corp"),
      "toRecipients": [addr("customer@partner.example")],
      "replyTo": [addr("support@corp.example", "Support"),
                  addr("Soren@Corp.Example", "Søren"),
                  addr("helpdesk@corp.example"),
                  addr("tickets@corp.example")],
      "body": text(BODY)})


# ---- importance: one case per variant, plus precedence ---------------------
def prio_case(name, headers, importance, xheaders=()):
    body = "Priority test: %s\n" % name
    msg = {"subject": "Priority " + name,
           "from": addr("alice@corp.example", "Alice"),
           "toRecipients": [addr("bob@corp.example", "Bob")],
           "body": text(body)}
    if importance is not None:
        msg["importance"] = importance
    if xheaders:
        msg["internetMessageHeaders"] = [hdr(n, v) for n, v in xheaders]
    case(name, env("alice@corp.example", "bob@corp.example"),
         M("From: Alice <alice@corp.example>\n"
           "To: Bob <bob@corp.example>\n"
           "Subject: Priority " + name + "\n",
           "".join(h + "\n" for h in headers),
           "MIME-Version: 1.0\nContent-Type: text/plain; charset=us-ascii\n\n",
           body), msg)


prio_case("importance-high", ["Importance: High"], "high")
prio_case("importance-normal-uppercase", ["Importance: NORMAL"], "normal")
prio_case("importance-low-lowercase-name", ["importance:low"], "low")
prio_case("x-priority-1-highest",
          ["X-Mailer: Microsoft Outlook Express 6.00.2900.5512",
           "X-Priority: 1 (Highest)", "X-MSMail-Priority: Low"], "high",
          [("X-Mailer", "Microsoft Outlook Express 6.00.2900.5512"),
           ("X-Priority", "1 (Highest)"), ("X-MSMail-Priority", "Low")])
prio_case("x-priority-2", ["X-Priority: 2"], "high", [("X-Priority", "2")])
prio_case("x-priority-3-normal", ["X-Priority: 3 (Normal)"], "normal",
          [("X-Priority", "3 (Normal)")])
prio_case("x-priority-4", ["X-Priority:4 (Low)"], "low",
          [("X-Priority", "4 (Low)")])
prio_case("x-priority-5-lowest", ["X-Priority: 5 (Lowest)"], "low",
          [("X-Priority", "5 (Lowest)")])
prio_case("priority-urgent", ["Priority: urgent"], "high")
prio_case("priority-normal", ["Priority: normal"], "normal")
prio_case("priority-non-urgent", ["Priority: non-urgent"], "low")
prio_case("priority-precedence-importance-wins",
          ["Priority: urgent", "X-Priority: 1 (Highest)", "Importance: low"],
          "low", [("X-Priority", "1 (Highest)")])
prio_case("priority-precedence-x-priority-over-priority",
          ["Priority: non-urgent", "X-Priority: 2 (High)"], "high",
          [("X-Priority", "2 (High)")])
prio_case("priority-invalid-values-fall-through",
          ["Importance: urgent", "X-Priority: 9", "Priority: normal"],
          "normal", [("X-Priority", "9")])
prio_case("priority-all-invalid-omitted",
          ["Importance: very high", "X-Priority: Highest",
           "Priority: emergency"], None, [("X-Priority", "Highest")])

# ---- read and delivery receipts ------------------------------------------
BODY = "Please confirm.\n"
case("receipts-both",
     env("alice@corp.example", "bob@corp.example"),
     M("""From: Alice <alice@corp.example>
To: Bob <bob@corp.example>
Subject: Contract
Disposition-Notification-To: Alice <alice@corp.example>
Return-Receipt-To: alice@corp.example
MIME-Version: 1.0
Content-Type: text/plain; charset=us-ascii

""", BODY),
     {"subject": "Contract",
      "from": addr("alice@corp.example", "Alice"),
      "toRecipients": [addr("bob@corp.example", "Bob")],
      "isReadReceiptRequested": True,
      "isDeliveryReceiptRequested": True,
      "body": text(BODY)})

case("receipt-read-only",
     env("alice@corp.example", "bob@corp.example"),
     M("""From: Alice <alice@corp.example>
To: Bob <bob@corp.example>
Subject: Read it
disposition-notification-to: alice@corp.example
MIME-Version: 1.0
Content-Type: text/plain; charset=us-ascii

""", BODY),
     {"subject": "Read it",
      "from": addr("alice@corp.example", "Alice"),
      "toRecipients": [addr("bob@corp.example", "Bob")],
      "isReadReceiptRequested": True,
      "body": text(BODY)})

# ---- Message-ID folded, with a comment; Message-ID with inner spaces ------
BODY = "ids\n"
case("message-id-folded-comment",
     env("gw@corp.example", "bob@corp.example"),
     M("""From: gw@corp.example
To: bob@corp.example
Subject: id
Message-ID:
 <CAF=3Dxyz+abc.1234@mail.example.com> (added by gateway)
MIME-Version: 1.0
Content-Type: text/plain; charset=us-ascii

""", BODY),
     {"subject": "id",
      "from": addr("gw@corp.example"),
      "toRecipients": [addr("bob@corp.example")],
      "internetMessageId": "<CAF=3Dxyz+abc.1234@mail.example.com>",
      "body": text(BODY)})

case("message-id-inner-whitespace",
     env("printer@corp.example", "bob@corp.example"),
     M("""From: printer@corp.example
To: bob@corp.example
Subject: id2
Message-ID: < 1709884805.0042 @ printer.corp.example >
MIME-Version: 1.0
Content-Type: text/plain; charset=us-ascii

""", BODY),
     {"subject": "id2",
      "from": addr("printer@corp.example"),
      "toRecipients": [addr("bob@corp.example")],
      "internetMessageId": "<1709884805.0042@printer.corp.example>",
      "body": text(BODY)})

# ---- seven X- headers: first five kept in order, folded one unfolded,
#      encoded-word not decoded, invalid UTF-8 -> U+FFFD, raw UTF-8 kept,
#      Xtra- not counted, X- header inside a MIME part not counted --------
PNG_X = make_png(1, 1, (9, 9, 9))
BODY = "X headers.\n"
case("x-headers-seven",
     env("app@corp.example", "bob@corp.example"),
     M("Received: from app01 (app01 [10.0.0.9]) by relay.corp.example;"
       " Fri, 8 Mar 2024 10:00:00 +0100\n"
       "Xtra-Info: not an X- header\n",
       T("X-Mailer: Scan2Mail 3.1 – Büro\n", "utf-8"),
       "From: app@corp.example\n",
       T("X-Job-Owner: Auftrag M\u00fcller #17\n", "iso-8859-1"),
       "x-lowercase-name:   spaced value   \n"
       "To: bob@corp.example\n"
       "X-Folded: first part\n\tsecond part\n   third part\n"
       "Subject: X headers\n"
       "X-Encoded: =?UTF-8?B?w5xiZXI=?=\n"
       "X-Sixth: 6\n"
       "X-Seventh: 7\n"
       "MIME-Version: 1.0\n"
       'Content-Type: multipart/mixed; boundary="xh"\n\n',
       mp("xh", [
           part("Content-Type: text/plain; charset=us-ascii\n", BODY),
           part('Content-Type: image/png; name="dot.png"\n'
                "Content-Disposition: attachment; filename=\"dot.png\"\n"
                "Content-Transfer-Encoding: base64\n"
                "X-Attachment-Id: f_lt1abcd0\n", b64w(PNG_X)),
       ])),
     {"subject": "X headers",
      "from": addr("app@corp.example"),
      "toRecipients": [addr("bob@corp.example")],
      "internetMessageHeaders": [
          hdr("X-Mailer", "Scan2Mail 3.1 – Büro"),
          hdr("X-Job-Owner", "Auftrag M\ufffdller #17"),
          hdr("x-lowercase-name", "spaced value"),
          hdr("X-Folded", "first part\tsecond part   third part"),
          hdr("X-Encoded", "=?UTF-8?B?w5xiZXI=?=")],
      "body": text(BODY),
      "attachments": [att("dot.png", "image/png", PNG_X)]})

# ---- invalid bytes in a UTF-8 declared body -> U+FFFD ----------------------
RAW = (b"Valid: \xc3\xa9 and \xf0\x9f\x98\x80.\r\n"
       b"Invalid: \xe9 and \xff here.\r\n"
       b"Stray continuation \x80 byte.\r\n")
BODY = ("Valid: é and 😀.\n"
        "Invalid: \ufffd and \ufffd here.\n"
        "Stray continuation \ufffd byte.\n")
case("body-utf8-invalid-bytes",
     env("legacy@corp.example", "bob@corp.example"),
     M("""From: legacy@corp.example
To: bob@corp.example
Subject: Broken UTF-8
MIME-Version: 1.0
Content-Type: text/plain; charset="UTF-8"
Content-Transfer-Encoding: 8bit

""", RAW),
     {"subject": "Broken UTF-8",
      "from": addr("legacy@corp.example"),
      "toRecipients": [addr("bob@corp.example")],
      "body": text(BODY)})

# ---- bare 8-bit, no charset: not UTF-8 -> windows-1252 ---------------------
BODY = "Grüße – “hallo” für 5 €\n"
case("body-no-charset-8bit-cp1252",
     env("oldapp@corp.example", "bob@corp.example"),
     M("""From: oldapp@corp.example
To: bob@corp.example
Subject: legacy

""", T(BODY, "cp1252")),
     {"subject": "legacy",
      "from": addr("oldapp@corp.example"),
      "toRecipients": [addr("bob@corp.example")],
      "body": text(BODY)})

# ---- bare 8-bit, no charset: valid UTF-8 -> UTF-8 --------------------------
BODY = "Grüße – “hallo” für 5 € 👍\n"
case("body-no-charset-8bit-utf8",
     env("newapp@corp.example", "bob@corp.example"),
     M("""From: newapp@corp.example
To: bob@corp.example
Subject: modern
MIME-Version: 1.0
Content-Type: text/plain
Content-Transfer-Encoding: 8bit

""", T(BODY, "utf-8")),
     {"subject": "modern",
      "from": addr("newapp@corp.example"),
      "toRecipients": [addr("bob@corp.example")],
      "body": text(BODY)})

# ---- wrong label: us-ascii declared, UTF-8 bytes -----------------------
BODY = "Naïve façade, 10 €\n"
case("body-us-ascii-label-utf8-bytes",
     env("script@corp.example", "bob@corp.example"),
     M("""From: script@corp.example
To: bob@corp.example
Subject: mislabeled
MIME-Version: 1.0
Content-Type: text/plain; charset=us-ascii
Content-Transfer-Encoding: 7bit

""", T(BODY, "utf-8")),
     {"subject": "mislabeled",
      "from": addr("script@corp.example"),
      "toRecipients": [addr("bob@corp.example")],
      "body": text(BODY)})

# ---- unknown label with windows-1252 bytes -------------------------------
BODY = "„Anführungszeichen“ – 20 €\n"
case("body-unknown-charset-cp1252",
     env("script@corp.example", "bob@corp.example"),
     M("""From: script@corp.example
To: bob@corp.example
Subject: unknown label
MIME-Version: 1.0
Content-Type: text/plain; charset="x-unknown"
Content-Transfer-Encoding: 8bit

""", T(BODY, "cp1252")),
     {"subject": "unknown label",
      "from": addr("script@corp.example"),
      "toRecipients": [addr("bob@corp.example")],
      "body": text(BODY)})

# ---- a 300 KB base64 attachment -------------------------------------------
PDF_BIG = make_pdf("big scan", prng("big", 300 * 1024))
assert 300 * 1024 < len(PDF_BIG) < 310 * 1024
BODY = "A large scan.\n"
case("large-attachment-300k",
     env("scanner@corp.example", "archive@corp.example"),
     M("""From: scanner@corp.example
To: archive@corp.example
Subject: Large scan
MIME-Version: 1.0
Content-Type: multipart/mixed; boundary="big-b"

""", mp("big-b", [
         part("Content-Type: text/plain; charset=us-ascii\n", BODY),
         part('Content-Type: application/pdf; name="big-scan.pdf"\n'
              "Content-Transfer-Encoding: base64\n"
              'Content-Disposition: attachment; filename="big-scan.pdf"\n',
              b64w(PDF_BIG)),
     ])),
     {"subject": "Large scan",
      "from": addr("scanner@corp.example"),
      "toRecipients": [addr("archive@corp.example")],
      "body": text(BODY),
      "attachments": [att("big-scan.pdf", "application/pdf", PDF_BIG)]})

# ---- save-to-sent-items: false ----------------------------------------------
BODY = "Do not keep a copy.\n"
case("save-to-sent-items-false",
     env("noreply@corp.example", "bob@corp.example", save=False),
     M("""From: noreply@corp.example
To: bob@corp.example
Subject: No copy
MIME-Version: 1.0
Content-Type: text/plain; charset=us-ascii

""", BODY),
     {"subject": "No copy",
      "from": addr("noreply@corp.example"),
      "toRecipients": [addr("bob@corp.example")],
      "body": text(BODY)})

# ---- printer: Received headers, odd header-name casing, upper-case
#      parameter names, QP body, lowercase content-* headers -------------
JPG_HP = make_jpeg("hp scan")
case("printer-odd-header-casing",
     env("printer@corp.example", "bob@corp.example"),
     M("""Received: from printer.corp.example (printer.corp.example [10.20.30.40])
	by relay.corp.example with SMTP; Wed, 6 Mar 2024 08:00:00 +0100
Received: from localhost by printer.corp.example; Wed, 6 Mar 2024 08:00:00 +0100
MIME-VERSION: 1.0
FROM: "HP LaserJet MFP" <printer@corp.example>
TO: <bob@corp.example>
SUBJECT: Scan to Email
DATE: Wed, 6 Mar 2024 08:00:00 +0100
message-id: <0001.hp-scan@printer.corp.example>
content-type: multipart/mixed; BOUNDARY="hp_boundary_7"

""", mp("hp_boundary_7", [
         part("content-type: text/plain; CHARSET=utf-8\n"
              "content-transfer-encoding: quoted-printable\n",
              "Scanned document =E2=80=93 1 page.\n"),
         part("content-type: image/jpeg\n"
              "content-transfer-encoding: base64\n"
              'content-disposition: attachment; FILENAME="scan.jpg"\n',
              b64w(JPG_HP)),
     ])),
     {"subject": "Scan to Email",
      "from": addr("printer@corp.example", "HP LaserJet MFP"),
      "toRecipients": [addr("bob@corp.example")],
      "internetMessageId": "<0001.hp-scan@printer.corp.example>",
      "body": text("Scanned document – 1 page.\n"),
      "attachments": [att("scan.jpg", "image/jpeg", JPG_HP)]})

# ---- boundary look-alikes inside body text --------------------------------
BODY = ("This line mentions --frontier in the middle.\n"
        "> --frontier\n"
        " --frontier\n"
        "-frontier\n"
        "---frontier\n"
        "text --frontier--\n"
        "End of text.\n")
PDF_FRONT = make_pdf("frontier")
case("boundary-lookalike-in-body",
     env("dev@corp.example", "bob@corp.example"),
     M("""From: dev@corp.example
To: bob@corp.example
Subject: Boundaries
MIME-Version: 1.0
Content-Type: multipart/mixed; boundary=frontier

Preamble mentioning --frontier too.
""", mp("frontier", [
         part("Content-Type: text/plain; charset=us-ascii\n", BODY),
         part('Content-Type: application/pdf; name="frontier.pdf"\n'
              "Content-Transfer-Encoding: base64\n", b64w(PDF_FRONT)),
     ], epilogue="Epilogue --frontier--\n")),
     {"subject": "Boundaries",
      "from": addr("dev@corp.example"),
      "toRecipients": [addr("bob@corp.example")],
      "body": text(BODY),
      "attachments": [att("frontier.pdf", "application/pdf", PDF_FRONT)]})

# ---- missing final boundary: parts seen so far still count -----------------
PDF_CUT = make_pdf("cut")
PNG_CUT = make_png(2, 3, (0, 0, 0))
BODY = "The sender crashed before the closing boundary.\n"
case("truncated-multipart",
     env("flaky@corp.example", "bob@corp.example"),
     M("""From: flaky@corp.example
To: bob@corp.example
Subject: Truncated
MIME-Version: 1.0
Content-Type: multipart/mixed; boundary="cut-here"

--cut-here
Content-Type: text/plain; charset=us-ascii

""", BODY, """
--cut-here
Content-Type: application/pdf; name="first.pdf"
Content-Transfer-Encoding: base64

""", b64w(PDF_CUT), """
--cut-here
Content-Type: image/png; name="second.png"
Content-Transfer-Encoding: base64

""", b64w(PNG_CUT)),
     {"subject": "Truncated",
      "from": addr("flaky@corp.example"),
      "toRecipients": [addr("bob@corp.example")],
      "body": text(BODY),
      "attachments": [att("first.pdf", "application/pdf", PDF_CUT),
                      att("second.png", "image/png", PNG_CUT)]})

# ---- format=flowed is not unflowed -------------------------------------------
BODY = ("This paragraph was written by a client that uses\x20\n"
        "format=flowed, so its soft line ends carry a trailing\x20\n"
        "space.\n"
        "> quoted\x20\n"
        "> text\n")
case("format-flowed-kept",
     env("tb@corp.example", "bob@corp.example"),
     M("""From: tb@corp.example
To: bob@corp.example
Subject: flowed
MIME-Version: 1.0
Content-Type: text/plain; charset=UTF-8; format=flowed; delsp=yes
Content-Transfer-Encoding: 7bit

""", BODY),
     {"subject": "flowed",
      "from": addr("tb@corp.example"),
      "toRecipients": [addr("bob@corp.example")],
      "body": text(BODY)})

# ---- S/MIME multipart/signed: the signature is an attachment -------------
P7S = make_der("smime")
BODY = "Signed message.\n"
case("smime-signed",
     env("signer@corp.example", "bob@corp.example"),
     M("""From: Signer <signer@corp.example>
To: bob@corp.example
Subject: Signed
MIME-Version: 1.0
Content-Type: multipart/signed; protocol="application/pkcs7-signature";
	micalg=sha-256; boundary="----SIG0123456789"

This is an S/MIME signed message

""", mp("----SIG0123456789", [
         part("Content-Type: text/plain; charset=us-ascii\n"
              "Content-Transfer-Encoding: 7bit\n", BODY),
         part('Content-Type: application/pkcs7-signature; name="smime.p7s"\n'
              "Content-Transfer-Encoding: base64\n"
              'Content-Disposition: attachment; filename="smime.p7s"\n',
              b64w(P7S)),
     ])),
     {"subject": "Signed",
      "from": addr("signer@corp.example", "Signer"),
      "toRecipients": [addr("bob@corp.example")],
      "body": text(BODY),
      "attachments": [att("smime.p7s", "application/pkcs7-signature", P7S)]})

# ---- Apple Mail: alternative [plain, mixed [html, image, html]] ----------
JPG_APPLE = make_jpeg("apple")
PLAIN = "Look at this:\n\n\n\nSent from my Mac\n"
HTML1 = ('<html><head><meta http-equiv="content-type" content="text/html; '
         'charset=us-ascii"></head><body style="overflow-wrap: break-word;">'
         'Look at this:<div><img apple-inline="yes" '
         'id="5F1E2D3C-AAAA-BBBB-CCCC-1234567890AB" '
         'src="cid:5F1E2D3C-AAAA-BBBB-CCCC-1234567890AB"></div></body></html>')
HTML2 = T('<html><head><meta http-equiv="content-type" content="text/html; '
          'charset=us-ascii"></head><body style="overflow-wrap: break-word;">'
          '<div><br></div>Sent from my Mac</body></html>')
case("apple-mail-alt-mixed-html",
     env("ann@corp.example", "bob@corp.example"),
     M("""From: Ann <ann@corp.example>
Content-Type: multipart/alternative;
	boundary="Apple-Mail=_3C4D5E6F-1A2B-3C4D-5E6F-708192A3B4C5"
Mime-Version: 1.0 (Mac OS X Mail 16.0 \\(3774.500.171.1.1\\))
Subject: Photo
Date: Sat, 9 Mar 2024 12:00:00 +0100
Message-Id: <A1B2C3D4-0000-1111-2222-333344445555@corp.example>
To: Bob <bob@corp.example>

""", mp("Apple-Mail=_3C4D5E6F-1A2B-3C4D-5E6F-708192A3B4C5", [
         part("Content-Transfer-Encoding: 7bit\n"
              "Content-Type: text/plain;\n\tcharset=us-ascii\n", PLAIN),
         part("Content-Type: multipart/mixed;\n"
              '\tboundary="Apple-Mail=_9ABCDEF0-1111-2222-3333-444455556666"\n',
              mp("Apple-Mail=_9ABCDEF0-1111-2222-3333-444455556666", [
                  part("Content-Transfer-Encoding: 7bit\n"
                       "Content-Type: text/html;\n\tcharset=us-ascii\n", HTML1),
                  part("Content-Disposition: inline;\n\tfilename=IMG_0042.jpeg\n"
                       "Content-Type: image/jpeg;\n\tx-unix-mode=0644;\n"
                       "\tname=\"IMG_0042.jpeg\"\n"
                       "Content-Id: <5F1E2D3C-AAAA-BBBB-CCCC-1234567890AB>\n"
                       "Content-Transfer-Encoding: base64\n", b64w(JPG_APPLE)),
                  part("Content-Transfer-Encoding: 7bit\n"
                       "Content-Type: text/html;\n\tcharset=us-ascii\n", HTML2),
              ])),
     ])),
     {"subject": "Photo",
      "from": addr("ann@corp.example", "Ann"),
      "toRecipients": [addr("bob@corp.example", "Bob")],
      "internetMessageId": "<A1B2C3D4-0000-1111-2222-333344445555@corp.example>",
      "body": html(HTML1),
      "attachments": [
          att("IMG_0042.jpeg", "image/jpeg", JPG_APPLE,
              cid="5F1E2D3C-AAAA-BBBB-CCCC-1234567890AB"),
          att("attachment-2.html", "text/html", HTML2)]})

# ---- mixed [intro text, alternative [plain, html]]: intro is an attachment
#      because the HTML wins; an ICS invitation with a name ---------------
INTRO = T("Forwarded by the ticket system:\n")
PLAIN = "Meeting on Monday.\n"
HTML = "<p>Meeting on <b>Monday</b>.</p>\n"
ICS = T("BEGIN:VCALENDAR\nVERSION:2.0\nMETHOD:REQUEST\nPRODID:-//corp//x//EN\n"
        "BEGIN:VEVENT\nUID:2@corp.example\nDTSTART:20240311T090000Z\n"
        "SUMMARY:Monday meeting\nEND:VEVENT\nEND:VCALENDAR\n")
case("html-wins-over-earlier-plain",
     env("tickets@corp.example", "bob@corp.example"),
     M("""From: tickets@corp.example
To: bob@corp.example
Subject: Meeting
MIME-Version: 1.0
Content-Type: multipart/mixed; boundary="hw-1"

""", mp("hw-1", [
         part("Content-Type: text/plain; charset=us-ascii\n", INTRO),
         part('Content-Type: multipart/alternative; boundary="hw-2"\n',
              mp("hw-2", [
                  part("Content-Type: text/plain; charset=us-ascii\n", PLAIN),
                  part("Content-Type: text/html; charset=us-ascii\n", HTML),
              ])),
         part('Content-Type: text/calendar; charset=utf-8; method=REQUEST;\n'
              ' name="invite.ics"\n'
              "Content-Transfer-Encoding: 7bit\n", ICS),
     ])),
     {"subject": "Meeting",
      "from": addr("tickets@corp.example"),
      "toRecipients": [addr("bob@corp.example")],
      "body": html(HTML),
      "attachments": [att("attachment-1.txt", "text/plain", INTRO),
                      att("invite.ics", "text/calendar", ICS)]})


# ==========================================================================
# encoded words, broken header blocks, body choice, unparseable types,
# damaged base64, BOM, browser charset labels
# ==========================================================================


def bword_padded(s, charset="UTF-8", pad="=="):
    """A B encoded-word of s that must end in the given padding."""
    w = bword(s, charset)
    assert w.endswith(pad + "?=") and not w.endswith("=" + pad + "?="), (s, w)
    return w


def bword_bytes(data, charset="UTF-8"):
    """A B encoded-word of raw bytes (may hold half a character)."""
    return "=?%s?B?%s?=" % (charset, base64.b64encode(data).decode())


def qword_bytes(data, charset="UTF-8"):
    """A Q encoded-word of raw bytes (may hold half a character)."""
    out = []
    for byte in data:
        c = chr(byte)
        if c == " ":
            out.append("_")
        elif byte < 128 and c.isalnum():
            out.append(c)
        else:
            out.append("=%02X" % byte)
    return "=?%s?Q?%s?=" % (charset, "".join(out))


def b64_unpadded(data, stray=""):
    """b64w() with the final '=' padding removed (and a stray character
    appended to the last line)."""
    s = b64w(data).rstrip("\n").rstrip("=") + stray
    return s + "\n"


def pdf_len_mod3(label, rem):
    """A PDF whose length is rem modulo 3 (so its base64 ends as wanted)."""
    for k in range(3):
        data = make_pdf(label, b"%" + b"x" * k + b"\n")
        if len(data) % 3 == rem:
            return data
    raise AssertionError(label)


# ---- 1. RFC 2047: a padded base64 word followed by another word (Subject) --
S1, S2 = "Ihre Rechnung für ", "März 2024 – bitte prüfen"
SUBJ = bword_padded(S1) + " " + bword(S2, "UTF-8")
case("ew-subject-padded-then-word",
     env("billing@corp.example", "bob@corp.example"),
     M("""From: billing@corp.example
To: bob@corp.example
Subject: """, SUBJ, """
MIME-Version: 1.0
Content-Type: text/plain; charset=us-ascii

Invoice follows.
"""),
     {"subject": S1 + S2,
      "from": addr("billing@corp.example"),
      "toRecipients": [addr("bob@corp.example")],
      "body": text("Invoice follows.\n")})

# ---- 1. padded base64 word + another word in From/To/Cc/Reply-To names ----
NF = ("Björn ", "Groß")
NT = ("Anaïs ", "Ångström")
NC = ("Søren ", "Müller-Lüdenscheidt")
NR = ("Zoë", " Support-Team")
BODY = "Names in two encoded words.\n"
case("ew-display-name-padded-then-word",
     env("juergen@corp.example", "zoe@partner.example", "zm@partner.example"),
     M("From: " + bword_padded(NF[0]) + " " + bword(NF[1], "UTF-8")
       + " <juergen@corp.example>\n"
       "To: " + bword_padded(NT[0]) + " " + bword(NT[1], "UTF-8")
       + " <zoe@partner.example>\n"
       "Cc: " + bword_padded(NC[0]) + "\n " + bword(NC[1], "UTF-8")
       + " <zm@partner.example>\n"
       "Reply-To: " + bword_padded(NR[0]) + " " + bword(NR[1], "UTF-8")
       + " <support@corp.example>\n"
       """Subject: Names
MIME-Version: 1.0
Content-Type: text/plain; charset=us-ascii

""", BODY),
     {"subject": "Names",
      "from": addr("juergen@corp.example", "".join(NF)),
      "toRecipients": [addr("zoe@partner.example", "".join(NT))],
      "ccRecipients": [addr("zm@partner.example", "".join(NC))],
      "replyTo": [addr("support@corp.example", "".join(NR))],
      "body": text(BODY)})

# ---- 1. file names split into a padded word and a word holding ".pdf" ----
PDF_EW1 = make_pdf("ew name and filename")
PDF_EW2 = make_pdf("ew name only")
PDF_EW3 = make_pdf("ew filename only")
F1 = ("Prüfbericht Köln ", "2024.pdf")
F2 = ("Angebot Nr", ".pdf")
F3 = ("Übersicht", " Q1.pdf")
EW1 = bword_padded(F1[0]) + " " + bword(F1[1], "UTF-8")
EW2 = bword_padded(F2[0]) + " " + bword(F2[1], "UTF-8")
EW3 = bword_padded(F3[0]) + "\n " + bword(F3[1], "UTF-8")
BODY = "Three documents.\n"
case("ew-filename-padded-then-extension",
     env("qs@corp.example", "bob@corp.example"),
     M("""From: qs@corp.example
To: bob@corp.example
Subject: Documents
MIME-Version: 1.0
Content-Type: multipart/mixed; boundary="ewf"

""", mp("ewf", [
         part("Content-Type: text/plain; charset=us-ascii\n", BODY),
         part('Content-Type: application/pdf; name="' + EW1 + '"\n'
              "Content-Transfer-Encoding: base64\n"
              'Content-Disposition: attachment; filename="' + EW1 + '"\n',
              b64w(PDF_EW1)),
         part('Content-Type: application/pdf; name="' + EW2 + '"\n'
              "Content-Transfer-Encoding: base64\n", b64w(PDF_EW2)),
         part("Content-Type: application/pdf\n"
              "Content-Transfer-Encoding: base64\n"
              'Content-Disposition: attachment;\n filename="' + EW3 + '"\n',
              b64w(PDF_EW3)),
     ])),
     {"subject": "Documents",
      "from": addr("qs@corp.example"),
      "toRecipients": [addr("bob@corp.example")],
      "body": text(BODY),
      "attachments": [att("".join(F1), "application/pdf", PDF_EW1),
                      att("".join(F2), "application/pdf", PDF_EW2),
                      att("".join(F3), "application/pdf", PDF_EW3)]})

# ---- 1. RFC 2231 filename* with charset and continuations; a UTF-8
#      character split across two sections ------------------------------
PDF_C1 = make_pdf("2231 latin1")
PDF_C2 = make_pdf("2231 split")
BODY = "RFC 2231 sections.\n"
case("rfc2231-continuations-charset-split",
     env("docs@corp.example", "bob@corp.example"),
     M("""From: docs@corp.example
To: bob@corp.example
Subject: Sections
MIME-Version: 1.0
Content-Type: multipart/mixed; boundary="r2231"

""", mp("r2231", [
         part("Content-Type: text/plain; charset=us-ascii\n", BODY),
         part("Content-Type: application/pdf\n"
              "Content-Transfer-Encoding: base64\n"
              "Content-Disposition: attachment;\n"
              " filename*0*=iso-8859-1'de'" + pct("Prüfbericht ", "iso-8859-1")
              + ";\n filename*1*=" + pct("Köln ", "iso-8859-1") + ";\n"
              ' filename*2="2024.pdf"\n', b64w(PDF_C1)),
         part("Content-Type: application/pdf\n"
              "Content-Transfer-Encoding: base64\n"
              "Content-Disposition: attachment;\n"
              " filename*0*=UTF-8''Beleg%20%E2%82;\n"
              " filename*1*=%AC%2019%20%E2%80%93%20Hotel.pdf\n",
              b64w(PDF_C2)),
     ])),
     {"subject": "Sections",
      "from": addr("docs@corp.example"),
      "toRecipients": [addr("bob@corp.example")],
      "body": text(BODY),
      "attachments": [att("Prüfbericht Köln 2024.pdf", "application/pdf", PDF_C1),
                      att("Beleg € 19 – Hotel.pdf", "application/pdf", PDF_C2)]})

# ---- 1. Q encoded words: subject of three words (=3F, =5F, _), names,
#      a Q-encoded filename= --------------------------------------------
PDF_Q = make_pdf("q filename")
SUBJ = ("=?utf-8?q?Re=3A_Angebot_=E2=80=93?= =?UTF-8?Q?_Preis=3F?=\n"
        " =?iso-8859-1?q?_=5Fdringend=5F_f=FCr_Andr=E9?=")
BODY = "Q words.\n"
case("ew-q-words",
     env("sales@corp.example", "andre@partner.example", "lea@partner.example"),
     M("""From: =?iso-8859-1?q?Ren=E9_M=FCller?= <sales@corp.example>
To: =?UTF-8?Q?Andr=C3=A9_Fran=C3=A7ois?= <andre@partner.example>
Cc: =?utf-8?q?L=C3=A9a?= =?utf-8?q?_=C3=96zdemir?= <lea@partner.example>
Subject: """, SUBJ, """
MIME-Version: 1.0
Content-Type: multipart/mixed; boundary="qw"

""", mp("qw", [
         part("Content-Type: text/plain; charset=us-ascii\n", BODY),
         part("Content-Type: application/pdf\n"
              "Content-Transfer-Encoding: base64\n"
              'Content-Disposition: attachment; filename="'
              "=?utf-8?q?Angebot_f=C3=BCr_Andr=C3=A9.pdf?=\"\n", b64w(PDF_Q)),
     ])),
     {"subject": "Re: Angebot – Preis? _dringend_ für André",
      "from": addr("sales@corp.example", "René Müller"),
      "toRecipients": [addr("andre@partner.example", "André François")],
      "ccRecipients": [addr("lea@partner.example", "Léa Özdemir")],
      "body": text(BODY),
      "attachments": [att("Angebot für André.pdf", "application/pdf", PDF_Q)]})

# ---- 1. a UTF-8 character split across two adjacent encoded words
#      (Q in Subject, B in the From name, B in a file name) -------------
PDF_SPLIT = make_pdf("split")
SB = "Grüße aus Köln".encode()
i = SB.index(b"\xc3")            # split inside the first ü
SUBJ = (qword_bytes(SB[:i + 1]) + " " + qword_bytes(SB[i + 1:]))
NB = "Привет Мир 👍".encode()
j = NB.index(b"\xf0") + 2       # split inside the emoji
FROM = bword_bytes(NB[:5]) + " " + bword_bytes(NB[5:j]) + " " + bword_bytes(NB[j:])
FB = "Prüfung.pdf".encode()
k = FB.index(b"\xc3") + 1
FNAME = bword_bytes(FB[:k]) + " " + bword_bytes(FB[k:])
BODY = "Split characters.\n"
case("ew-multibyte-split-across-words",
     env("ivan@corp.example", "bob@corp.example"),
     M("From: " + FROM + " <ivan@corp.example>\n"
       "To: bob@corp.example\n"
       "Subject: " + SUBJ + "\n"
       """MIME-Version: 1.0
Content-Type: multipart/mixed; boundary="split"

""", mp("split", [
         part("Content-Type: text/plain; charset=us-ascii\n", BODY),
         part('Content-Type: application/pdf; name="' + FNAME + '"\n'
              "Content-Transfer-Encoding: base64\n"
              'Content-Disposition: attachment; filename="' + FNAME + '"\n',
              b64w(PDF_SPLIT)),
     ])),
     {"subject": "Grüße aus Köln",
      "from": addr("ivan@corp.example", "Привет Мир 👍"),
      "toRecipients": [addr("bob@corp.example")],
      "body": text(BODY),
      "attachments": [att("Prüfung.pdf", "application/pdf", PDF_SPLIT)]})

# ---- 2. no blank line between the message's headers and its body ---------
BODY = ("Disk /var on db01 is 93 percent full.\n"
        "Cleanup started.\n"
        "\n"
        "-- \n"
        "monitor\n")
case("header-no-blank-line-before-body",
     env("monitor@corp.example", "oncall@corp.example"),
     M("""From: Monitor <monitor@corp.example>
To: oncall@corp.example
Subject: Disk alert
MIME-Version: 1.0
Content-Type: text/plain; charset=us-ascii
""", BODY),
     {"subject": "Disk alert",
      "from": addr("monitor@corp.example", "Monitor"),
      "toRecipients": [addr("oncall@corp.example")],
      "body": text(BODY)})

# ---- 2. no blank line between a MIME part's headers and its body ----------
PDF_NB = make_pdf("no blank in part")
BODY = "Hello Bob,\nthe scan is attached.\n"
case("header-no-blank-line-in-part",
     env("scanner@corp.example", "bob@corp.example"),
     M("""From: scanner@corp.example
To: bob@corp.example
Subject: Scan
MIME-Version: 1.0
Content-Type: multipart/mixed; boundary="nbp"

--nbp
Content-Type: text/plain; charset=us-ascii
Content-Transfer-Encoding: 7bit
""", BODY, """--nbp
Content-Type: application/pdf; name="scan.pdf"
Content-Transfer-Encoding: base64

""", b64w(PDF_NB), """--nbp--
"""),
     {"subject": "Scan",
      "from": addr("scanner@corp.example"),
      "toRecipients": [addr("bob@corp.example")],
      "body": text(BODY.rstrip("\n")),
      "attachments": [att("scan.pdf", "application/pdf", PDF_NB)]})

# ---- 2. the message's headers directly followed by the first boundary:
#      the part's Content-Type must not replace the message's -----------
PDF_NBB = make_pdf("no blank before boundary")
BODY = "Body of the first part.\n"
case("header-no-blank-line-before-boundary",
     env("app@corp.example", "bob@corp.example"),
     M("""From: App <app@corp.example>
To: bob@corp.example
Subject: Report without a blank line
MIME-Version: 1.0
Content-Type: multipart/mixed; boundary="nbb"
""", mp("nbb", [
         part("Content-Type: text/plain; charset=us-ascii\n", BODY),
         part('Content-Type: application/pdf; name="report.pdf"\n'
              "Content-Transfer-Encoding: base64\n", b64w(PDF_NBB)),
     ])),
     {"subject": "Report without a blank line",
      "from": addr("app@corp.example", "App"),
      "toRecipients": [addr("bob@corp.example")],
      "body": text(BODY),
      "attachments": [att("report.pdf", "application/pdf", PDF_NBB)]})

# ---- 2. a broken fold (continuation without leading white space) in
#      Subject, more fields after it ---------------------------------------
BODY = "Numbers attached.\n"
case("header-broken-fold-subject",
     env("cfo@corp.example", "bob@corp.example"),
     M("""From: CFO <cfo@corp.example>
Subject: Quarterly report for
the northern region
To: Bob <bob@corp.example>
MIME-Version: 1.0
Content-Type: text/plain; charset=us-ascii

""", BODY),
     {"subject": "Quarterly report for the northern region",
      "from": addr("cfo@corp.example", "CFO"),
      "toRecipients": [addr("bob@corp.example", "Bob")],
      "body": text(BODY)})

# ---- 2. a broken fold in a MIME part's Content-Type (name= on its own
#      line), more fields after it -------------------------------------------
PDF_BF = make_pdf("broken fold in part")
BODY = "Quote attached.\n"
case("header-broken-fold-in-part",
     env("sales@corp.example", "bob@corp.example"),
     M("""From: sales@corp.example
To: bob@corp.example
Subject: Quote
MIME-Version: 1.0
Content-Type: multipart/mixed; boundary="bfp"

""", mp("bfp", [
         part("Content-Type: text/plain; charset=us-ascii\n", BODY),
         part("Content-Type: application/pdf;\n"
              'name="quote 2024.pdf"\n'
              "Content-Transfer-Encoding: base64\n", b64w(PDF_BF)),
     ])),
     {"subject": "Quote",
      "from": addr("sales@corp.example"),
      "toRecipients": [addr("bob@corp.example")],
      "body": text(BODY),
      "attachments": [att("quote 2024.pdf", "application/pdf", PDF_BF)]})

# ---- 2. no header at all: the whole text is the body ----------------------
BODY = ("Hello team,\n"
        "\n"
        "the nightly backup finished at 02:00 without errors.\n"
        "\n"
        "backup01\n")
case("no-headers-body-only",
     env("backup@corp.example", "ops@corp.example"),
     M(BODY),
     {"subject": "",
      "bccRecipients": [addr("ops@corp.example")],
      "body": text(BODY)})

# ---- 3. first text part with a file name, inline: the body ---------------
PDF_B1 = make_pdf("body choice 1")
BODY = "Please sign the attached contract.\n"
case("text-inline-filename-first-is-body",
     env("legal@corp.example", "bob@corp.example"),
     M("""From: legal@corp.example
To: bob@corp.example
Subject: Contract
MIME-Version: 1.0
Content-Type: multipart/mixed; boundary="tif"

""", mp("tif", [
         part('Content-Type: text/plain; charset=utf-8; name="message.txt"\n'
              'Content-Disposition: inline; filename="message.txt"\n', BODY),
         part('Content-Type: application/pdf; name="contract.pdf"\n'
              "Content-Transfer-Encoding: base64\n"
              'Content-Disposition: attachment; filename="contract.pdf"\n',
              b64w(PDF_B1)),
     ])),
     {"subject": "Contract",
      "from": addr("legal@corp.example"),
      "toRecipients": [addr("bob@corp.example")],
      "body": text(BODY),
      "attachments": [att("contract.pdf", "application/pdf", PDF_B1)]})

# ---- 3. first text part with name= and no disposition: the body ---------
PDF_B2 = make_pdf("body choice 2")
BODY = "Scanned document attached.\n"
case("text-name-no-disposition-first-is-body",
     env("mfp@corp.example", "bob@corp.example"),
     M("""From: mfp@corp.example
To: bob@corp.example
Subject: Scan
MIME-Version: 1.0
Content-Type: multipart/mixed; boundary="tnd"

""", mp("tnd", [
         part('Content-Type: text/plain; charset=us-ascii; name="body.txt"\n'
              "Content-Transfer-Encoding: 7bit\n", BODY),
         part('Content-Type: application/pdf; name="scan.pdf"\n'
              "Content-Transfer-Encoding: base64\n", b64w(PDF_B2)),
     ])),
     {"subject": "Scan",
      "from": addr("mfp@corp.example"),
      "toRecipients": [addr("bob@corp.example")],
      "body": text(BODY),
      "attachments": [att("scan.pdf", "application/pdf", PDF_B2)]})

# ---- 3. first text/html part with name=: the (HTML) body ------------------
HTML = "<html><body><p>Your <b>statement</b> is ready.</p></body></html>\n"
case("html-name-first-is-body",
     env("bank@corp.example", "bob@corp.example"),
     M("""From: bank@corp.example
To: bob@corp.example
Subject: Statement
MIME-Version: 1.0
Content-Type: multipart/mixed; boundary="hnf"

""", mp("hnf", [
         part('Content-Type: text/html; charset=us-ascii; name="statement.html"\n',
              HTML),
     ])),
     {"subject": "Statement",
      "from": addr("bank@corp.example"),
      "toRecipients": [addr("bob@corp.example")],
      "body": html(HTML)})

# ---- 3. later text/plain parts with a file name: attachments -------------
BODY = "Notes attached.\n"
NOTES = T("meeting notes\n")
TODO = T("todo list\n")
case("text-second-with-filename-is-attachment",
     env("pm@corp.example", "bob@corp.example"),
     M("""From: pm@corp.example
To: bob@corp.example
Subject: Notes
MIME-Version: 1.0
Content-Type: multipart/mixed; boundary="tsf"

""", mp("tsf", [
         part("Content-Type: text/plain; charset=us-ascii\n", BODY),
         part("Content-Type: text/plain; charset=us-ascii\n"
              'Content-Disposition: inline; filename="notes.txt"\n', NOTES),
         part('Content-Type: text/plain; charset=us-ascii; name="todo.txt"\n',
              TODO),
     ])),
     {"subject": "Notes",
      "from": addr("pm@corp.example"),
      "toRecipients": [addr("bob@corp.example")],
      "body": text(BODY),
      "attachments": [att("notes.txt", "text/plain", NOTES),
                      att("todo.txt", "text/plain", TODO)]})

# ---- 3. first text part with Content-Disposition: attachment ------------
README = T("Read me first.\n")
PDF_B3 = make_pdf("body choice 3")
case("text-first-disposition-attachment",
     env("dist@corp.example", "bob@corp.example"),
     M("""From: dist@corp.example
To: bob@corp.example
Subject: Package
MIME-Version: 1.0
Content-Type: multipart/mixed; boundary="tfa"

""", mp("tfa", [
         part("Content-Type: text/plain; charset=us-ascii\n"
              "Content-Disposition: attachment\n", README),
         part('Content-Type: application/pdf; name="manual.pdf"\n'
              "Content-Transfer-Encoding: base64\n", b64w(PDF_B3)),
     ])),
     {"subject": "Package",
      "from": addr("dist@corp.example"),
      "toRecipients": [addr("bob@corp.example")],
      "body": text(""),
      "attachments": [att("attachment-1.txt", "text/plain", README),
                      att("manual.pdf", "application/pdf", PDF_B3)]})

# ---- 4. Content-Type without a subtype: text/plain; charset=us-ascii
#      (the UTF-8 bytes are then read as UTF-8) ----------------------------
BODY = "Job finished: café machine cleaned.\n"
case("ctype-no-subtype",
     env("cron@corp.example", "bob@corp.example"),
     M("""From: cron@corp.example
To: bob@corp.example
Subject: Job
MIME-Version: 1.0
Content-Type: text
Content-Transfer-Encoding: 8bit

""", T(BODY, "utf-8")),
     {"subject": "Job",
      "from": addr("cron@corp.example"),
      "toRecipients": [addr("bob@corp.example")],
      "body": text(BODY)})

# ---- 4. Content-Type: <html> is text/plain, not HTML ---------------------
BODY = "<html><body><p>Build finished.</p></body></html>\n"
case("ctype-angle-html",
     env("ci@corp.example", "bob@corp.example"),
     M("""From: ci@corp.example
To: bob@corp.example
Subject: Build
MIME-Version: 1.0
Content-Type: <html>

""", BODY),
     {"subject": "Build",
      "from": addr("ci@corp.example"),
      "toRecipients": [addr("bob@corp.example")],
      "body": text(BODY)})

# ---- 4. garbage Content-Type on the first part of a multipart ------------
PDF_G = make_pdf("garbage ctype")
BODY = "Text under a garbage Content-Type.\n"
case("ctype-garbage",
     env("app@corp.example", "bob@corp.example"),
     M("""From: app@corp.example
To: bob@corp.example
Subject: Garbage
MIME-Version: 1.0
Content-Type: multipart/mixed; boundary="garb"

""", mp("garb", [
         part("Content-Type: @@@ garbage ;;; ===\n", BODY),
         part('Content-Type: application/pdf; name="data.pdf"\n'
              "Content-Transfer-Encoding: base64\n", b64w(PDF_G)),
     ])),
     {"subject": "Garbage",
      "from": addr("app@corp.example"),
      "toRecipients": [addr("bob@corp.example")],
      "body": text(BODY),
      "attachments": [att("data.pdf", "application/pdf", PDF_G)]})

# ---- 4. unparseable Content-Type + a file name: application/octet-stream
#      attachment with that name ------------------------------------------
PDF_U = make_pdf("unparseable with name")
JPG_U = make_jpeg("unparseable with filename")
BODY = "Two files with broken types.\n"
case("ctype-unparseable-with-filename",
     env("app@corp.example", "bob@corp.example"),
     M("""From: app@corp.example
To: bob@corp.example
Subject: Broken types
MIME-Version: 1.0
Content-Type: multipart/mixed; boundary="unp"

""", mp("unp", [
         part("Content-Type: text/plain; charset=us-ascii\n", BODY),
         part('Content-Type: pdf; name="report.pdf"\n'
              "Content-Transfer-Encoding: base64\n", b64w(PDF_U)),
         part("Content-Type: <image>\n"
              "Content-Transfer-Encoding: base64\n"
              'Content-Disposition: inline; filename="photo.jpg"\n',
              b64w(JPG_U)),
     ])),
     {"subject": "Broken types",
      "from": addr("app@corp.example"),
      "toRecipients": [addr("bob@corp.example")],
      "body": text(BODY),
      "attachments": [att("report.pdf", "application/octet-stream", PDF_U),
                      att("photo.jpg", "application/octet-stream", JPG_U)]})

# ---- 4. a single-part message whose unparseable type names a file: an
#      attachment, not the body ------------------------------------------
PDF_U1 = make_pdf("unparseable single part")
case("ctype-unparseable-filename-single-part",
     env("fax@corp.example", "bob@corp.example"),
     M("""From: fax@corp.example
To: bob@corp.example
Subject: Fax
MIME-Version: 1.0
Content-Type: pdf; name="fax.pdf"
Content-Transfer-Encoding: base64

""", b64w(PDF_U1)),
     {"subject": "Fax",
      "from": addr("fax@corp.example"),
      "toRecipients": [addr("bob@corp.example")],
      "body": text(""),
      "attachments": [att("fax.pdf", "application/octet-stream", PDF_U1)]})


# ---- 5. base64 without its final padding; a stray trailing character -----
def b64_case(name, data, enc_text, label):
    body = "Attachment %s.\n" % label
    case(name,
         env("scanner@corp.example", "bob@corp.example"),
         M("""From: scanner@corp.example
To: bob@corp.example
Subject: """ + label + """
MIME-Version: 1.0
Content-Type: multipart/mixed; boundary="b64m"

""", mp("b64m", [
             part("Content-Type: text/plain; charset=us-ascii\n", body),
             part('Content-Type: application/pdf; name="scan.pdf"\n'
                  "Content-Transfer-Encoding: base64\n", enc_text),
         ])),
         {"subject": label,
          "from": addr("scanner@corp.example"),
          "toRecipients": [addr("bob@corp.example")],
          "body": text(body),
          "attachments": [att("scan.pdf", "application/pdf", data)]})


PDF_4N2 = pdf_len_mod3("unpadded 4n+2", 1)
E = b64_unpadded(PDF_4N2)
assert len(E.replace("\n", "")) % 4 == 2 and "=" not in E
b64_case("malformed-b64-unpadded-4n2", PDF_4N2, E, "unpadded 4n+2")
PDF_4N3 = pdf_len_mod3("unpadded 4n+3", 2)
E = b64_unpadded(PDF_4N3)
assert len(E.replace("\n", "")) % 4 == 3 and "=" not in E
b64_case("malformed-b64-unpadded-4n3", PDF_4N3, E, "unpadded 4n+3")
PDF_4N1 = pdf_len_mod3("stray 4n+1", 0)
E = b64_unpadded(PDF_4N1, "Q")
assert len(E.replace("\n", "")) % 4 == 1 and "=" not in E
b64_case("malformed-b64-stray-char-4n1", PDF_4N1, E, "stray 4n+1")

# ---- 5. a body text part in base64 without its padding -------------------
BODY = "Grüße aus Köln – ünpadded base64 body.\n"
RAW = T(BODY, "utf-8")
assert len(RAW) % 3 != 0
case("malformed-b64-unpadded-body",
     env("app@corp.example", "bob@corp.example"),
     M("""From: app@corp.example
To: bob@corp.example
Subject: unpadded body
MIME-Version: 1.0
Content-Type: text/plain; charset=utf-8
Content-Transfer-Encoding: base64

""", b64_unpadded(RAW)),
     {"subject": "unpadded body",
      "from": addr("app@corp.example"),
      "toRecipients": [addr("bob@corp.example")],
      "body": text(BODY)})

# ---- 6. a UTF-8 byte-order mark before the first header -----------------
BODY = "The file started with a byte-order mark.\n"
case("bom-before-headers",
     env("winapp@corp.example", "bob@corp.example"),
     M(b"\xef\xbb\xbf", """From: Win App <winapp@corp.example>
To: Bob <bob@corp.example>
Subject: BOM
MIME-Version: 1.0
Content-Type: text/plain; charset=utf-8

""", BODY),
     {"subject": "BOM",
      "from": addr("winapp@corp.example", "Win App"),
      "toRecipients": [addr("bob@corp.example", "Bob")],
      "body": text(BODY)})

# ---- 7. charset labels as browsers read them (WHATWG Encoding) ---------


def not_in(codec, *texts):
    """Each text holds a character the strict codec can't encode."""
    for t in texts:
        try:
            t.encode(codec)
            raise AssertionError((codec, t))
        except UnicodeEncodeError:
            pass


def charset_case(name, sender, rcpt, label, codec, body, subject,
                 word=bword, name_text=None, raw=None):
    """A text/plain body and Subject (and From name) labelled `label`,
    written in the browsers' codec for it: what a reader must see."""
    cs = label.strip('"')
    frm = (word(name_text, cs, codec) + " <%s>" % sender
           if name_text else sender)
    case(name, env(sender, rcpt),
         M("From: ", frm, "\nTo: ", rcpt, "\nSubject: ",
           word(subject, cs, codec), """
MIME-Version: 1.0
Content-Type: text/plain; charset=""" + label + """
Content-Transfer-Encoding: 8bit

""", raw if raw is not None else T(body, codec)),
         {"subject": subject,
          "from": addr(sender, name_text),
          "toRecipients": [addr(rcpt)],
          "body": text(body)})


# gb2312: GB18030-only characters (the euro sign, a 4-byte ideograph).
BODY = ("发票金额：€ 100。\n"
        "吉祥物：𠮷野家。\n")
not_in("gb2312", "€", "𠮷")
charset_case("body-gb2312-gb18030-chars", "li@corp.example",
             "wang@partner.example", "gb2312", "gb18030", BODY, "发票 € 𠮷")

# gbk: traditional characters outside GB2312.
BODY = "繁體中文測試：鏡子、龍、鎔。\n"
same_decoding(T(BODY, "gbk"), ["gbk", "gb18030"])
same_decoding("繁體報告".encode("gbk"), ["gbk", "gb18030"])
not_in("gb2312", "體")
charset_case("body-gbk", "chen@corp.example", "lin@partner.example",
             '"GBK"', "gbk", BODY, "繁體報告", name_text="陳大文")

# ks_c_5601-1987: hangul only cp949 (UHC) has, not KS X 1001 (EUC-KR).
BODY = "안녕하세요.\n똠방각하 햏 펲 - 확장 한글입니다.\n"
for ch in "똠햏펲":
    cb = ch.encode("cp949")
    assert len(cb) == 2 and (cb[0] < 0xA1 or cb[1] < 0xA1), ch
charset_case("body-ks-c-5601-cp949", "kim@corp.example",
             "park@partner.example", '"ks_c_5601-1987"', "cp949", BODY,
             "회의 똠 햏")

# iso-8859-1: bytes 0x80-0x9F are windows-1252 characters.
BODY = ("Price: 100 € – that’s “final”…\n"
        "Trademark™ • Œuvre ‰ Šárka Žižka\n")
assert any(0x80 <= c <= 0x9F for c in T(BODY, "cp1252"))
charset_case("body-latin1-label-c1-as-cp1252", "shop@corp.example",
             "bob@corp.example", "iso-8859-1", "cp1252", BODY,
             "Angebot – 50 € ‘final’", word=qword,
             name_text="Café “Zum Löwen”")

# shift_jis: windows-31j characters (NEC/IBM extensions, fullwidth forms).
BODY = "①会議は１０時～１２時です。\n㈱山田商事　髙橋様\n金額：－５００円\n"
not_in("shift_jis", BODY, "①㈱髙橋～見積")
charset_case("body-shift-jis-cp932-chars", "yamada@corp.example",
             "takahashi@partner.example", "Shift_JIS", "cp932", BODY,
             "①㈱髙橋～見積")

# ---- 7. unknown label, valid UTF-8 -> UTF-8; us-ascii encoded word with
#      UTF-8 bytes -> UTF-8 --------------------------------------------------
BODY = "Grüße – “hallo” für 5 € 👍\n"
case("body-unknown-charset-utf8",
     env("script@corp.example", "bob@corp.example"),
     M("""From: script@corp.example
To: bob@corp.example
Subject: =?us-ascii?Q?Caf=C3=A9_cr=C3=A8me?=
MIME-Version: 1.0
Content-Type: text/plain; charset="x-unknown"
Content-Transfer-Encoding: 8bit

""", T(BODY, "utf-8")),
     {"subject": "Café crème",
      "from": addr("script@corp.example"),
      "toRecipients": [addr("bob@corp.example")],
      "body": text(BODY)})


# ==========================================================================
# writing


def check_eml(name, eml):
    assert b"\n" in eml, name
    for i, ch in enumerate(eml):
        if ch == 0x0A:
            assert i > 0 and eml[i - 1] == 0x0D, (name, "bare LF", i)
        elif ch == 0x0D:
            assert eml[i + 1:i + 2] == b"\n", (name, "bare CR", i)
    assert eml.endswith(b"\r\n"), name
    assert all(len(line) <= 998 for line in eml.split(b"\r\n")), name


def check_json(name, obj):
    def walk(v):
        assert v is not None, (name, "null")
        if isinstance(v, list):
            assert v, (name, "empty array")
            for x in v:
                walk(x)
        elif isinstance(v, dict):
            for x in v.values():
                walk(x)
    walk(obj)
    assert len(obj["message"]["subject"]) <= 255, name


def env_text(e):
    lines = ["mail-from: " + e["from"] if e["from"] else "mail-from:"]
    lines += ["rcpt: " + r for r in e["rcpts"]]
    if not e["save"]:
        lines.append("save-to-sent-items: false")
    return "\n".join(lines) + "\n"


def main():
    out = sys.argv[1] if len(sys.argv) > 1 else HERE
    os.makedirs(out, exist_ok=True)
    names = set()
    for name, e, eml, message in CASES:
        body = {"message": message, "saveToSentItems": e["save"]}
        check_eml(name, eml)
        check_json(name, body)
        names.add(name)
        with open(os.path.join(out, name + ".eml"), "wb") as f:
            f.write(eml)
        with open(os.path.join(out, name + ".env"), "w", encoding="ascii",
                  newline="\n") as f:
            f.write(env_text(e))
        with open(os.path.join(out, name + ".json"), "w", encoding="utf-8",
                  newline="\n") as f:
            json.dump(body, f, ensure_ascii=False, indent=2)
            f.write("\n")
    for fn in sorted(os.listdir(out)):
        stem, ext = os.path.splitext(fn)
        if ext in (".eml", ".env", ".json") and stem not in names:
            os.remove(os.path.join(out, fn))
    print("%d cases written to %s" % (len(CASES), out))


if __name__ == "__main__":
    main()
