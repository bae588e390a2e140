"""Export check: records and aggregates exported as CSV, XLSX, JSON, XML and DOCX, read back with
Python's csv, openpyxl, an XML parser and python-docx; every value matches the JSON answer, and
strings a spreadsheet would execute carry a leading ' in CSV and XLSX.

Usage: export_check.py BASE_URL CA_PEM TOKEN DATASET
"""
import csv
import io
import json
import sys
import xml.etree.ElementTree as ET

import docx
import openpyxl
import requests

FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def neutral(v):
    return "'" + v if isinstance(v, str) and v.startswith(FORMULA_START) else v


def main():
    base, ca, token, dataset = sys.argv[1:5]
    s = requests.Session()
    s.trust_env = False
    s.verify = ca
    s.headers["Authorization"] = f"Bearer {token}"
    out = {}

    def get(path, **params):
        r = s.get(f"{base}{path}", params=params, timeout=60)
        assert r.status_code == 200, (path, params, r.status_code, r.text[:500])
        return r

    rec_path = f"/api/v1/datasets/{dataset}/records"
    full = get(rec_path, format="json").json()
    records = full["records"]
    assert full["truncated"] is False and len(records) == full["total"], full
    by_id = {r["id"]: r for r in records}

    # CSV: a header, one row per record; formulas neutralised, numbers as numbers.
    rows = list(csv.DictReader(io.StringIO(get(rec_path, format="csv").text)))
    assert len(rows) == len(records)
    for row in rows:
        r = by_id[row["id"]]
        for field, value in r["data"].items():
            want = neutral(value) if isinstance(value, str) else json.dumps(value)
            assert row[field] == want, (field, row[field], want)
    # XLSX: the same cells; numbers are numeric cells.
    wb = openpyxl.load_workbook(io.BytesIO(get(rec_path, format="xlsx").content))
    ws = wb["records"]
    header = [c.value for c in ws[1]]
    xrows = [dict(zip(header, [c.value for c in row])) for row in ws.iter_rows(min_row=2)]
    assert len(xrows) == len(records)
    for row in xrows:
        r = by_id[row["id"]]
        for field, value in r["data"].items():
            assert row[field] == neutral(value), (field, row[field], value)
    # Accept selects the format too.
    r = s.get(f"{base}{rec_path}", headers={"Accept": "text/csv"}, timeout=60)
    assert r.headers["content-type"].startswith("text/csv"), r.headers
    # XML: one row per record, cells typed; values as in JSON (no neutralising: XML is not a sheet).
    root = ET.fromstring(get(rec_path, format="xml").content)
    assert root.tag == "export" and root.get("kind") == "records"
    xml_rows = root.findall("row")
    assert len(xml_rows) == len(records)
    for row in xml_rows:
        cells = {c.get("name"): c for c in row.findall("cell")}
        r = by_id[cells["id"].text]
        for field, value in r["data"].items():
            c = cells[field]
            got = float(c.text) if c.get("type") == "number" else (c.text or "")
            assert got == value, (field, got, value)
    # DOCX: title, period, a table with a header and one row per record, a totals line.
    d = docx.Document(io.BytesIO(get(rec_path, format="docx").content))
    text = "\n".join(p.text for p in d.paragraphs)
    assert dataset in text and "Received from" in text and "records exported" in text, text
    table = d.tables[0]
    assert len(table.rows) == len(records) + 1
    out["records"] = len(records)

    # Aggregates: JSON, then each format; the totals row sums count and the sum measure.
    agg_path = f"/api/v1/datasets/{dataset}/aggregates"
    params = {"interval": "month", "group_by": "agency"}
    agg = get(agg_path, **params).json()
    assert agg["rows"], agg
    total_count = sum(r["count"] for r in agg["rows"])
    total_tx = sum(r["transactions"] for r in agg["rows"])
    arows = list(csv.DictReader(io.StringIO(get(agg_path, format="csv", **params).text)))
    assert len(arows) == len(agg["rows"]) + 1 and arows[-1]["bucket"] == "total"
    for row, want in zip(arows, agg["rows"]):
        assert row["bucket"] == want["bucket"] and row["agency"] == neutral(want["agency"]), (row, want)
        assert float(row["transactions"]) == want["transactions"] and int(row["count"]) == want["count"]
    assert float(arows[-1]["count"]) == total_count and float(arows[-1]["transactions"]) == total_tx
    ws = openpyxl.load_workbook(io.BytesIO(get(agg_path, format="xlsx", **params).content))["aggregates"]
    header = [c.value for c in ws[1]]
    xr = [dict(zip(header, [c.value for c in row])) for row in ws.iter_rows(min_row=2)]
    assert [r["count"] for r in xr[:-1]] == [r["count"] for r in agg["rows"]]
    assert xr[-1]["transactions"] == total_tx
    root = ET.fromstring(get(agg_path, format="xml", **params).content)
    assert len(root.findall("row")) == len(agg["rows"]) and root.find("totals") is not None
    period = {"from": "2026-01", "to": "2026-12"}
    d = docx.Document(io.BytesIO(get(agg_path, format="docx", **params, **period).content))
    text = "\n".join(p.text for p in d.paragraphs)
    assert "Period: 2026-01 to 2026-12" in text and "Totals" in text, text
    cells = [c.text for c in d.tables[0].rows[-1].cells]
    assert cells[0] == "total" and str(total_tx) in " ".join(cells), cells
    assert get(agg_path, format="json", **params).json()["rows"] == agg["rows"]
    out["aggregate_rows"] = len(agg["rows"])
    print(json.dumps(out))


if __name__ == "__main__":
    main()
