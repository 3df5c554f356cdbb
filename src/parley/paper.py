"""A joint statement on paper: its text, its signers, its time in both zones, and a QR code.

The page is made with fpdf2. Its QR code (segno, alphanumeric mode) carries
the statement's paper bundle (`core.bundle.to_paper`): both signatures, the
signing keys, and both sites' final entries with their inclusion proofs into
co-signed checkpoints, so that the printed copy can be verified by itself
(``parley record verify --from-qr SCAN``), its text checked against the hash
printed under it (``--text FILE``).

Text in any script needs a Unicode font: DejaVu Sans (Debian:
fonts-dejavu-core) when installed; without it, only Latin-1 text can be set.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from pathlib import Path
from typing import Any

import segno
from fpdf import FPDF

from parley.core import schedule
from parley.core.errors import ErrorCode, LocalError

FONT_DIRS = (Path("/usr/share/fonts/truetype/dejavu"), Path("/usr/share/fonts/dejavu"))


def _font(pdf: FPDF, texts: list[str]) -> str:
    for folder in FONT_DIRS:
        regular, bold = folder / "DejaVuSans.ttf", folder / "DejaVuSans-Bold.ttf"
        if regular.exists():
            pdf.add_font("dejavu", "", str(regular))
            pdf.add_font("dejavu", "B", str(bold if bold.exists() else regular))
            return "dejavu"
    try:
        for text in texts:
            text.encode("latin-1")
    except UnicodeEncodeError:
        raise LocalError("this statement's text needs a Unicode font to print",
                         code=ErrorCode.BAD_CONFIG,
                         hint="install one: apt-get install fonts-dejavu-core") from None
    return "helvetica"


def _grouped(hexed: str, size: int = 4) -> str:
    return " ".join(hexed[i:i + size] for i in range(0, len(hexed), size))


def statement_pdf(view: dict[str, Any], code: str, *, zones: list[str],
                  name_of: Callable[[str], str], final_ms: int) -> bytes:
    """The printable page of a final statement (`Statements.view`), with its paper code."""
    version = next(v for v in view["versions"] if v["version"] == view["final"])
    pdf = FPDF(format="A4")
    pdf.set_auto_page_break(True, margin=15)
    pdf.set_title(version["title"])
    pdf.set_creator("Parley")
    family = _font(pdf, [version["title"], version["text"]])
    pdf.add_page()
    width = pdf.w - pdf.l_margin - pdf.r_margin

    pdf.set_font(family, "B", 16)
    pdf.multi_cell(width, 8, version["title"], new_x="LMARGIN", new_y="NEXT")
    pdf.ln(2)
    pdf.set_font(family, "", 9)
    parties = " and ".join(name_of(p) for p in view["parties"])
    pdf.multi_cell(width, 5, f"Joint statement of {parties}", new_x="LMARGIN", new_y="NEXT")
    pdf.multi_cell(width, 5, "Final: " + schedule.show_time(final_ms, zones),
                   new_x="LMARGIN", new_y="NEXT")
    pdf.ln(4)
    pdf.set_font(family, "", 11)
    pdf.multi_cell(width, 6, version["text"], new_x="LMARGIN", new_y="NEXT")
    pdf.ln(4)
    if version["attachments"]:
        pdf.set_font(family, "B", 9)
        pdf.cell(width, 5, "Attachments", new_x="LMARGIN", new_y="NEXT")
        pdf.set_font(family, "", 8)
        for item in version["attachments"]:
            pdf.multi_cell(width, 4, f"{item['name']} ({item['size']:,} bytes), SHA-256"
                                     f" {_grouped(item['sha256'], 8)}",
                           new_x="LMARGIN", new_y="NEXT")
        pdf.ln(2)

    pdf.set_font(family, "B", 9)
    pdf.cell(width, 5, "Signed by", new_x="LMARGIN", new_y="NEXT")
    pdf.set_font(family, "", 8)
    for signer, key in view["signing_keys"].items():
        pdf.multi_cell(width, 4, f"{signer} ({name_of(signer.split('/')[0])}), signing key"
                                 f" {key}", new_x="LMARGIN", new_y="NEXT")
    pdf.ln(2)
    pdf.set_font(family, "B", 9)
    pdf.cell(width, 5, "Version and text", new_x="LMARGIN", new_y="NEXT")
    pdf.set_font(family, "", 8)
    pdf.multi_cell(width, 4, f"Version {version['version']}, statement"
                             f" {view['statement']}", new_x="LMARGIN", new_y="NEXT")
    pdf.multi_cell(width, 4, f"SHA-256 of the version: {_grouped(version['sha256'], 8)}",
                   new_x="LMARGIN", new_y="NEXT")
    pdf.multi_cell(width, 4, f"SHA-256 of the text: {_grouped(view['text_sha256'], 8)}",
                   new_x="LMARGIN", new_y="NEXT")
    logs = ", ".join(f"{site} (entry {index:,})" for site, index in view["recorded"].items())
    pdf.multi_cell(width, 4, f"Recorded in the logs of {logs}", new_x="LMARGIN", new_y="NEXT")
    pdf.ln(3)

    try:  # as much error correction as the code leaves room for
        qr = segno.make(code, error="m", micro=False)
    except segno.DataOverflowError:
        qr = segno.make(code, error="l", micro=False)
    image = io.BytesIO()
    qr.save(image, kind="png", scale=4, border=4)
    side = min(width, 110.0)
    if pdf.get_y() + side + 20 > pdf.h - pdf.b_margin:
        pdf.add_page()
    pdf.image(image, x=pdf.l_margin + (width - side) / 2, w=side, h=side)
    pdf.ln(2)
    pdf.set_font(family, "", 8)
    pdf.multi_cell(width, 4, "This code carries both signatures and both sites' co-signed"
                             " checkpoints. Check this copy with: parley record verify"
                             " --from-qr SCAN --text TEXT-FILE", align="C",
                   new_x="LMARGIN", new_y="NEXT")
    return bytes(pdf.output())
