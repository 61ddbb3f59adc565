"""What a finalized invoice links to: its hosted page (with a Pay button that stands for the
customer paying) and its PDF."""

from __future__ import annotations

import html
from typing import Any


def _money(amount: int, currency: str) -> str:
    return f"{amount / 100:,.2f} {currency.upper()}"


def invoice_page(invoice: dict[str, Any]) -> bytes:
    rows = "".join(
        f"<tr><td>{html.escape(line['description'] or '')}</td>"
        f"<td>{_money(line['amount'], line['currency'])}</td></tr>"
        for line in invoice["lines"]["data"]
    )
    pay = (
        f'<form method="post" action="/i/{invoice["id"]}/pay"><button>Pay</button></form>'
        if invoice["status"] == "open"
        else ""
    )
    page = (
        "<!doctype html><html><head><meta charset='utf-8'>"
        f"<title>Invoice {html.escape(invoice['number'] or invoice['id'])}</title></head><body>"
        f"<h1>Invoice {html.escape(invoice['number'] or invoice['id'])}</h1>"
        f"<p>Status: <strong>{invoice['status']}</strong></p>"
        f"<p>Amount due: {_money(invoice['amount_remaining'], invoice['currency'])}</p>"
        f"<table>{rows}</table>{pay}</body></html>"
    )
    return page.encode()


def invoice_pdf(invoice: dict[str, Any]) -> bytes:
    """A one-page PDF naming the invoice, its status and amount."""
    text = (
        f"Invoice {invoice['number'] or invoice['id']} - {invoice['status']} - "
        f"{_money(invoice['amount_due'], invoice['currency'])}"
    )
    safe = text.replace("\\", "\\\\").replace("(", "\\(").replace(")", "\\)")
    stream = f"BT /F1 14 Tf 72 720 Td ({safe}) Tj ET".encode("latin-1", "replace")
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents 4 0 R "
        b"/Resources << /Font << /F1 5 0 R >> >> >>",
        b"<< /Length " + str(len(stream)).encode() + b" >>\nstream\n" + stream + b"\nendstream",
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
    ]
    out = bytearray(b"%PDF-1.4\n")
    offsets = []
    for number, body in enumerate(objects, start=1):
        offsets.append(len(out))
        out += f"{number} 0 obj\n".encode() + body + b"\nendobj\n"
    xref = len(out)
    out += f"xref\n0 {len(objects) + 1}\n0000000000 65535 f \n".encode()
    for offset in offsets:
        out += f"{offset:010d} 00000 n \n".encode()
    out += (
        f"trailer\n<< /Size {len(objects) + 1} /Root 1 0 R >>\nstartxref\n{xref}\n%%EOF\n".encode()
    )
    return bytes(out)
