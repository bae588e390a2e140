"""Writes the same records in every batch format with independent writers (the csv, json and
xml.etree modules, pyarrow and openpyxl), plus bad files, for tests/tests/batches.rs.

Usage: batch_files.py OUT_DIR N
"""
import csv
import io
import json
import sys
import zipfile
import xml.etree.ElementTree as ET

import openpyxl
import pyarrow as pa
import pyarrow.parquet as pq

AGENCIES = ["Bộ Tài chính", "UBND Hà Nội", "Sở Thông tin và Truyền thông Đà Nẵng", "Tổng cục Thuế",
            "Bảo hiểm xã hội Việt Nam"]
CHANNELS = ["web", "mobile", "counter"]


def records(n):
    out = []
    for i in range(n):
        r = {
            "ref": f"R{i:06d}",
            "agency": AGENCIES[i % len(AGENCIES)],
            "period": f"2024-{i % 12 + 1:02d}",
            "channel": CHANNELS[i % len(CHANNELS)],
            "transactions": 1000 + i,
            "failed": i % 17,
        }
        if i % 3 == 0:
            r["note"] = f'ghi chú, "trích dẫn" số {i}\nhai dòng'
        out.append(r)
    return out


FIELDS = ["ref", "agency", "period", "channel", "transactions", "failed", "note"]


def main():
    out, n = sys.argv[1], int(sys.argv[2])
    rs = records(n)
    with open(f"{out}/records.json", "w", encoding="utf-8") as f:
        json.dump(rs, f, ensure_ascii=False)
    with open(f"{out}/records.ndjson", "w", encoding="utf-8") as f:
        for r in rs:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    with open(f"{out}/records.csv", "w", encoding="utf-8-sig", newline="") as f:
        w = csv.DictWriter(f, fieldnames=FIELDS)
        w.writeheader()
        for r in rs:
            w.writerow(r)
    root = ET.Element("records")
    for r in rs:
        rec = ET.SubElement(root, "record")
        for k in FIELDS:
            if k in r:
                ET.SubElement(rec, k).text = str(r[k])
    ET.ElementTree(root).write(f"{out}/records.xml", encoding="utf-8", xml_declaration=True)
    table = pa.table({
        "ref": pa.array([r["ref"] for r in rs], pa.string()),
        "agency": pa.array([r["agency"] for r in rs], pa.string()),
        "period": pa.array([r["period"] for r in rs], pa.string()),
        "channel": pa.array([r["channel"] for r in rs], pa.string()),
        "transactions": pa.array([r["transactions"] for r in rs], pa.int64()),
        "failed": pa.array([r["failed"] for r in rs], pa.int32()),
        "note": pa.array([r.get("note") for r in rs], pa.string()),
    })
    pq.write_table(table, f"{out}/records.parquet", compression="zstd")
    wrong = table.set_column(4, "transactions", pa.array([str(r["transactions"]) for r in rs], pa.string()))
    pq.write_table(wrong, f"{out}/wrong_schema.parquet")
    wb = openpyxl.Workbook(write_only=True)
    ws = wb.create_sheet("records")
    ws.append(FIELDS)
    for r in rs:
        ws.append([r.get(k) for k in FIELDS])
    wb.save(f"{out}/records.xlsx")

    # Bad inputs.
    with open(f"{out}/stray_quote.csv", "w", encoding="utf-8", newline="") as f:
        f.write("ref,agency,period,channel,transactions,failed\r\n")
        f.write("R1,Bộ Tài chính,2024-01,web,10,1\r\n")
        f.write('R2,Bộ "Tài" chính,2024-01,web,10,1\r\n')
    data = open(f"{out}/records.json", "rb").read()
    open(f"{out}/truncated.json", "wb").write(data[: len(data) // 2])
    open(f"{out}/deep.json", "w").write('[{"ref": "R1", "x": ' + "[" * 40 + "]" * 40 + "}]")
    open(f"{out}/laughs.xml", "w").write(
        '<?xml version="1.0"?>\n<!DOCTYPE lolz [<!ENTITY lol "lol">'
        '<!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">]>\n'
        "<records><record><ref>&lol2;</ref></record></records>")
    # A zip bomb dressed as a workbook: a real workbook whose sheet is padded with 50 MB of blanks.
    src = zipfile.ZipFile(f"{out}/records.xlsx")
    with zipfile.ZipFile(f"{out}/bomb.xlsx", "w", zipfile.ZIP_DEFLATED) as z:
        for item in src.infolist():
            body = src.read(item.filename)
            if item.filename.startswith("xl/worksheets/"):
                body = body + b" " * (50 * 1024 * 1024)
            z.writestr(item.filename, body)


if __name__ == "__main__":
    main()
