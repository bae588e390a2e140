"""gRPC interop check: generates a client for dtm.v1.Ingest from proto/ with grpcio-tools and
submits over TLS (cluster CA, no client certificate), with Submit and SubmitStream.

Usage: grpc_client.py GRPC_ADDR CA_PEM API_KEY DATASET PROTO_DIR
Prints one JSON object; exits non-zero (AssertionError) on a mismatch.
"""
import importlib
import json
import sys
import tempfile

import grpc
from grpc_tools import protoc


def stubs(proto_dir):
    out = tempfile.mkdtemp(prefix="dtm-grpc-")
    rc = protoc.main(["protoc", f"-I{proto_dir}", f"--python_out={out}", f"--grpc_python_out={out}",
                      "dtm/v1/ingest.proto"])
    assert rc == 0, f"protoc failed: {rc}"
    sys.path.insert(0, out)
    return importlib.import_module("dtm.v1.ingest_pb2"), importlib.import_module("dtm.v1.ingest_pb2_grpc")


def main():
    addr, ca, key, dataset, proto_dir = sys.argv[1:6]
    pb, pb_grpc = stubs(proto_dir)
    with open(ca, "rb") as f:
        creds = grpc.ssl_channel_credentials(root_certificates=f.read())
    channel = grpc.secure_channel(addr, creds)
    stub = pb_grpc.IngestStub(channel)
    md = [("x-api-key", key)]
    out = {}

    one = stub.Submit(pb.SubmitRequest(dataset=dataset, records_json=[json.dumps({"n": 100, "label": "grpc"})],
                                       idempotency_key="grpc-idem-1"), metadata=md, timeout=30)
    assert one.accepted == 1 and len(one.ids) == 1 and one.commit_index > 0 and not one.replayed, one
    again = stub.Submit(pb.SubmitRequest(dataset=dataset, records_json=[json.dumps({"n": 100, "label": "grpc"})],
                                         idempotency_key="grpc-idem-1"), metadata=md, timeout=30)
    assert again.replayed and list(again.ids) == list(one.ids), again
    out["submit"] = {"ids": list(one.ids), "commit_index": one.commit_index}

    # Invalid records: INVALID_ARGUMENT with the REST code and details in the trailing metadata.
    try:
        stub.Submit(pb.SubmitRequest(dataset=dataset, records_json=['{"n": 1}', '{"n": "x"}']), metadata=md, timeout=30)
        raise AssertionError("invalid records accepted")
    except grpc.RpcError as e:
        assert e.code() == grpc.StatusCode.INVALID_ARGUMENT, e
        trailing = dict(e.trailing_metadata())
        assert trailing["dtm-error-code"] == "invalid_records", trailing
        details = json.loads(trailing["dtm-error-details-bin"])
        assert [d["record"] for d in details] == [1], details
        out["invalid"] = {"code": trailing["dtm-error-code"], "details": details}

    for bad_md, want in [([], grpc.StatusCode.UNAUTHENTICATED),
                         ([("x-api-key", "dtmk.0000000000000000.nope")], grpc.StatusCode.UNAUTHENTICATED)]:
        try:
            stub.Submit(pb.SubmitRequest(dataset=dataset, records_json=['{"n": 1}']), metadata=bad_md, timeout=30)
            raise AssertionError("a call without a valid key was accepted")
        except grpc.RpcError as e:
            assert e.code() == want, (e.code(), e.details())
    try:
        stub.Submit(pb.SubmitRequest(dataset="no_such_dataset", records_json=['{"n": 1}']), metadata=md, timeout=30)
        raise AssertionError("unknown dataset accepted")
    except grpc.RpcError as e:
        assert e.code() == grpc.StatusCode.NOT_FOUND, e

    # A stream: answers come one per request, in order; a refused request does not end the stream.
    requests = [
        pb.SubmitRequest(dataset=dataset, records_json=[json.dumps({"n": i, "label": f"stream {i}"})])
        for i in range(20)
    ]
    requests[7] = pb.SubmitRequest(dataset=dataset, records_json=['{"label": "no n"}'])
    requests[12] = pb.SubmitRequest(dataset=dataset, records_json=["not json"])
    answers = list(stub.SubmitStream(iter(requests), metadata=md, timeout=60))
    assert [a.sequence for a in answers] == list(range(20)), [a.sequence for a in answers]
    stream_ids = []
    for i, a in enumerate(answers):
        kind = a.WhichOneof("result")
        if i == 7:
            assert kind == "error" and a.error.code == "invalid_records" and a.error.http_status == 422, a
            assert [d.record for d in a.error.details] == [0], a
        elif i == 12:
            assert kind == "error" and a.error.code == "malformed_json" and a.error.http_status == 400, a
        else:
            assert kind == "ok" and a.ok.accepted == 1, a
            stream_ids.extend(a.ok.ids)
    out["stream_ids"] = stream_ids
    try:
        list(stub.SubmitStream(iter(requests[:1]), metadata=[], timeout=30))
        raise AssertionError("a stream without credentials was accepted")
    except grpc.RpcError as e:
        assert e.code() == grpc.StatusCode.UNAUTHENTICATED, e
    print(json.dumps(out))


if __name__ == "__main__":
    main()
