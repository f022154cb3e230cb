"""A local stand-in of the KFP v2beta1 REST API: records every request and answers what kfp.Client needs.

Written by hand because no KFP server runs without a cluster; it keeps pipelines, versions and experiments
in memory (so a second upload of the same version is found), binds 127.0.0.1 only, and stops with its
context manager. Requests through the kubeconfig's API-server proxy
(``/api/v1/namespaces/<ns>/services/ml-pipeline:http/proxy/apis/...``) are served the same way.
"""
from __future__ import annotations

import email.parser
import email.policy
import itertools
import json
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

API = "/apis/v2beta1/"


@dataclass
class Request:
    method: str
    path: str  # as sent, proxy prefix included
    route: str  # after /apis/v2beta1/
    query: dict[str, str]
    headers: dict[str, str]
    body: dict | None = None  # JSON bodies
    files: dict[str, bytes] = field(default_factory=dict)  # multipart uploads
    response: dict | None = None  # what the stand-in answered


class KFPStandIn:
    def __init__(self):
        self.requests: list[Request] = []
        self.pipelines: list[dict] = []
        self.versions: list[dict] = []
        self.experiments: list[dict] = []
        self._ids = itertools.count(1)
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def __enter__(self) -> "KFPStandIn":
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()

    def calls(self, method: str, route: str) -> list[Request]:
        return [r for r in self.requests if r.method == method and r.route == route]

    def _id(self, kind: str) -> str:
        return f"{kind}-{next(self._ids)}"

    # ---------------------------------------------------------------- routes
    def answer(self, req: Request) -> tuple[int, dict]:
        route, m = req.route, req.method
        if (m, route) == ("GET", "healthz"):
            return 200, {"multi_user": False}
        if (m, route) == ("GET", "pipelines"):
            return 200, _page("pipelines", _filtered(self.pipelines, req.query))
        if (m, route) == ("POST", "pipelines/upload"):
            if "uploadfile" not in req.files:
                return 400, {"error": "no uploadfile"}
            pipeline = {"pipeline_id": self._id("pipeline"), "display_name": req.query.get("name"),
                        "created_at": "2026-01-01T00:00:00Z"}
            self.pipelines.append(pipeline)
            self.versions.append({"pipeline_id": pipeline["pipeline_id"], "pipeline_version_id": self._id("version"),
                                  "display_name": req.query.get("name")})
            return 200, pipeline
        if (m, route) == ("POST", "pipelines/upload_version"):
            if "uploadfile" not in req.files or not any(p["pipeline_id"] == req.query.get("pipelineid")
                                                        for p in self.pipelines):
                return 400, {"error": "no uploadfile or unknown pipelineid"}
            version = {"pipeline_id": req.query["pipelineid"], "pipeline_version_id": self._id("version"),
                       "display_name": req.query.get("name")}
            self.versions.append(version)
            return 200, version
        if m == "GET" and route.startswith("pipelines/") and route.endswith("/versions"):
            pid = route.split("/")[1]
            own = [v for v in self.versions if v["pipeline_id"] == pid]
            return 200, _page("pipeline_versions", _filtered(own, req.query))
        if (m, route) == ("GET", "experiments"):
            return 200, _page("experiments", _filtered(self.experiments, req.query))
        if (m, route) == ("POST", "experiments"):
            experiment = {**req.body, "experiment_id": self._id("experiment")}
            self.experiments.append(experiment)
            return 200, experiment
        if (m, route) == ("POST", "runs"):
            return 200, {**req.body, "run_id": self._id("run"), "state": "PENDING"}
        if (m, route) == ("POST", "recurringruns"):
            return 200, {**req.body, "recurring_run_id": self._id("recurring"), "status": "ENABLED"}
        return 404, {"error": f"the stand-in does not serve {m} {req.path}"}

    def _handler(self):
        standin = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # quiet
                pass

            def _serve(self):
                url = urlparse(self.path)
                route = url.path.split(API, 1)[1] if API in url.path else url.path
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                req = Request(self.command, url.path, route, {k: v[0] for k, v in parse_qs(url.query).items()},
                              {k.lower(): v for k, v in self.headers.items()})
                ctype = self.headers.get("Content-Type", "")
                if raw and ctype.startswith("application/json"):
                    req.body = json.loads(raw)
                elif raw and ctype.startswith("multipart/form-data"):
                    req.files = _multipart(ctype, raw)
                standin.requests.append(req)
                status, payload = standin.answer(req)
                req.response = payload
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = do_DELETE = _serve

        return Handler


def _multipart(ctype: str, raw: bytes) -> dict[str, bytes]:
    msg = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
        f"Content-Type: {ctype}\r\n\r\n".encode() + raw)
    return {part.get_param("name", header="content-disposition"): part.get_payload(decode=True)
            for part in msg.iter_parts()}


def _filtered(items: list[dict], query: dict) -> list[dict]:
    if "filter" not in query:
        return items
    for p in json.loads(query["filter"]).get("predicates", []):
        items = [i for i in items if i.get(p["key"]) == p.get("stringValue", p.get("string_value"))]
    return items


def _page(key: str, items: list[dict]) -> dict:
    return {key: items, "total_size": len(items)} if items else {}
