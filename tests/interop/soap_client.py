"""SOAP interop check with zeep: reads the WSDL, submits over SOAP 1.1 and 1.2, and checks faults.

Usage: soap_client.py BASE_URL CA_PEM API_KEY DATASET
Prints one JSON object with what it saw; exits non-zero (AssertionError) on a mismatch.
"""
import json
import sys

import requests
import zeep
from zeep.exceptions import Fault
from zeep.transports import Transport

NS = "urn:dtm:soap:v1"


def fault_error(fault):
    """The dtm:Error detail of a fault, as a dict."""
    assert fault.detail is not None, f"fault without detail: {fault.message}"
    err = fault.detail.find(f"{{{NS}}}Error")
    assert err is not None, "detail without dtm:Error"
    problems = []
    for p in err.findall(f"{{{NS}}}Problem"):
        rec = p.find(f"{{{NS}}}Record")
        problems.append({
            "record": int(rec.text) if rec is not None else None,
            "field": (p.find(f"{{{NS}}}Field").text or "") if p.find(f"{{{NS}}}Field") is not None else None,
            "json": json.loads(p.find(f"{{{NS}}}Json").text),
        })
    return {
        "code": err.find(f"{{{NS}}}Code").text,
        "status": int(err.find(f"{{{NS}}}Status").text),
        "message": err.find(f"{{{NS}}}Message").text,
        "problems": problems,
        "faultcode": fault.code,
    }


def main():
    base, ca, key, dataset = sys.argv[1:5]
    out = {}
    session = requests.Session()
    session.verify = ca
    # The environment may name another CA bundle (REQUESTS_CA_BUNDLE), which requests prefers.
    session.trust_env = False
    transport = Transport(session=session, timeout=30, operation_timeout=30)
    client = zeep.Client(f"{base}/soap/v1?wsdl", transport=transport)
    soap11 = client.bind("DtmService", "DtmSoap11")
    soap12 = client.bind("DtmService", "DtmSoap12")

    # SOAP 1.1, credentials in the HTTP header, with an idempotency key; then the same again.
    session.headers["X-API-Key"] = key
    records = [{"n": 1, "label": "soap-1.1 a"}, {"n": 2, "label": "soap-1.1 b"}]
    first = soap11.SubmitRecords(Dataset=dataset, RecordsJson=json.dumps(records), IdempotencyKey="soap-idem-1")
    assert first.Accepted == 2 and len(first.Id) == 2 and first.CommitIndex > 0, first
    assert list(first.Outcome) == ["stored", "stored"] and first.Replayed is False, first
    again = soap11.SubmitRecords(Dataset=dataset, RecordsJson=json.dumps(records), IdempotencyKey="soap-idem-1")
    assert again.Replayed is True and list(again.Id) == list(first.Id), again
    out["soap11"] = {"ids": list(first.Id), "commit_index": first.CommitIndex, "replayed_ids": list(again.Id)}

    # SOAP 1.1 invalid records: a fault with the REST code and one problem per record.
    bad = [{"n": 3}, {"n": "three"}, {"label": "no n"}]
    try:
        soap11.SubmitRecords(Dataset=dataset, RecordsJson=json.dumps(bad))
        raise AssertionError("invalid records were accepted")
    except Fault as f:
        err = fault_error(f)
        assert err["code"] == "invalid_records" and err["status"] == 422, err
        assert "Client" in err["faultcode"], err
        assert sorted(p["record"] for p in err["problems"]) == [1, 2], err
        out["soap11_invalid"] = err

    # SOAP 1.2 with the credential in the SOAP header only.
    del session.headers["X-API-Key"]
    second = soap12.SubmitRecords(
        Dataset=dataset, RecordsJson=json.dumps({"n": 10, "label": "soap-1.2"}), _soapheaders={"ApiKey": key}
    )
    assert second.Accepted == 1 and len(second.Id) == 1, second
    out["soap12"] = {"ids": list(second.Id), "commit_index": second.CommitIndex}

    # SOAP 1.2 fault: unknown dataset, and a wrong key.
    try:
        soap12.SubmitRecords(Dataset="no_such_dataset", RecordsJson="[]", _soapheaders={"ApiKey": key})
        raise AssertionError("unknown dataset accepted")
    except Fault as f:
        err = fault_error(f)
        assert err["code"] == "unknown_dataset" and err["status"] == 404, err
        out["soap12_unknown_dataset"] = err["code"]
    try:
        soap12.SubmitRecords(Dataset=dataset, RecordsJson="[]", _soapheaders={"ApiKey": "dtmk.0000000000000000.x"})
        raise AssertionError("a wrong key was accepted")
    except Fault as f:
        err = fault_error(f)
        assert err["status"] == 401, err
        out["soap12_bad_key"] = err["code"]

    # A batch over SOAP (base64 content) and its status: the same receipt as REST.
    batch = json.dumps([{"n": 20, "label": "batch"}, {"n": "bad"}, {"n": 21, "label": "batch"}]).encode()
    receipt = soap11.SubmitBatch(Dataset=dataset, ContentType="application/json", Content=batch,
                                 IdempotencyKey="soap-batch-1", _soapheaders={"ApiKey": key})
    assert receipt.Accepted == 2 and receipt.Rejected == 1 and len(receipt.Problem) == 1, receipt
    status = soap12.GetBatchStatus(BatchId=receipt.BatchId, _soapheaders={"ApiKey": key})
    assert status.BatchId == receipt.BatchId and json.loads(status.Json)["accepted"] == 2, status
    out["batch"] = {"batch_id": receipt.BatchId, "receipt": json.loads(status.Json)}
    try:
        soap12.GetBatchStatus(BatchId="no-such-batch", _soapheaders={"ApiKey": key})
        raise AssertionError("an unknown batch was found")
    except Fault as f:
        assert fault_error(f)["code"] == "not_found", fault_error(f)

    # A DOCTYPE (entity expansion attempt) is refused as malformed XML, with a SOAP 1.1 fault.
    bomb = (
        '<?xml version="1.0"?><!DOCTYPE e [<!ENTITY a "aaaaaaaaaa"><!ENTITY b "&a;&a;&a;&a;">]>'
        f'<soap:Envelope xmlns:soap="http://schemas.xmlsoap.org/soap/envelope/"><soap:Body>&b;</soap:Body></soap:Envelope>'
    )
    r = session.post(f"{base}/soap/v1", data=bomb,
                      headers={"Content-Type": "text/xml; charset=utf-8", "SOAPAction": "x", "X-API-Key": key})
    assert r.status_code == 500 and b"malformed_xml" in r.content and b"faultcode" in r.content, (r.status_code, r.text)
    out["doctype"] = "refused"
    print(json.dumps(out))


if __name__ == "__main__":
    main()
