"""Report check (A5.3, F4, C8-C9): reads a report's DOCX with python-docx and its XLSX with openpyxl,
independently of the Rust writers, and prints what it found as one JSON line: for the DOCX, every
table under its heading (rows of cell texts); for the XLSX, every sheet (rows of cell values).

Usage: report_check.py REPORT.docx REPORT.xlsx
"""
import json
import sys

import docx
import openpyxl
from docx.table import Table
from docx.text.paragraph import Paragraph


def docx_tables(path):
    d = docx.Document(path)
    out, heading = {}, None
    for child in d.element.body.iterchildren():
        tag = child.tag.rsplit("}", 1)[-1]
        if tag == "p":
            text = Paragraph(child, d).text.strip()
            if text:
                heading = text
        elif tag == "tbl":
            t = Table(child, d)
            out[heading or "(untitled)"] = [[c.text for c in row.cells] for row in t.rows]
    return {"title": d.paragraphs[0].text if d.paragraphs else "", "tables": out}


def xlsx_sheets(path):
    wb = openpyxl.load_workbook(path, read_only=True)
    return {ws.title: [list(r) for r in ws.iter_rows(values_only=True)] for ws in wb.worksheets}


def main():
    docx_path, xlsx_path = sys.argv[1:3]
    print(json.dumps({"docx": docx_tables(docx_path), "xlsx": xlsx_sheets(xlsx_path)}, default=str))


if __name__ == "__main__":
    main()
