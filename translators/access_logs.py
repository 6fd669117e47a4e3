"""Access logs to files, in Istio's default format (text or JSON) or the mesh's own."""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

from envoy.config.accesslog.v3 import accesslog_pb2
from envoy.config.core.v3 import base_pb2
from envoy.config.core.v3 import substitution_format_string_pb2 as format_pb2
from envoy.extensions.access_loggers.file.v3 import file_pb2
from envoy.extensions.access_loggers.filters.cel.v3 import cel_pb2
from google.protobuf import struct_pb2

from translators.resources import to_any

FILE_LOGGER = "envoy.access_loggers.file"
CEL_FILTER = "envoy.access_loggers.extension_filters.cel"

# Istio's default text format (EnvoyTextLogFormat), one line per request or connection.
ISTIO_TEXT_FORMAT = (
    '[%START_TIME%] "%REQ(:METHOD)% %REQ(X-ENVOY-ORIGINAL-PATH?:PATH)% %PROTOCOL%" '
    "%RESPONSE_CODE% %RESPONSE_FLAGS% %RESPONSE_CODE_DETAILS% "
    '%CONNECTION_TERMINATION_DETAILS% "%UPSTREAM_TRANSPORT_FAILURE_REASON%" '
    "%BYTES_RECEIVED% %BYTES_SENT% %DURATION% %RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)% "
    '"%REQ(X-FORWARDED-FOR)%" "%REQ(USER-AGENT)%" "%REQ(X-REQUEST-ID)%" '
    '"%REQ(:AUTHORITY)%" "%UPSTREAM_HOST%" %UPSTREAM_CLUSTER_RAW% '
    "%UPSTREAM_LOCAL_ADDRESS% %DOWNSTREAM_LOCAL_ADDRESS% %DOWNSTREAM_REMOTE_ADDRESS% "
    "%REQUESTED_SERVER_NAME% %ROUTE_NAME%\n"
)

# Istio's default JSON format (EnvoyJSONLogFormatIstio): the same fields, by name.
ISTIO_JSON_FORMAT = {
    "start_time": "%START_TIME%",
    "method": "%REQ(:METHOD)%",
    "path": "%REQ(X-ENVOY-ORIGINAL-PATH?:PATH)%",
    "protocol": "%PROTOCOL%",
    "response_code": "%RESPONSE_CODE%",
    "response_flags": "%RESPONSE_FLAGS%",
    "response_code_details": "%RESPONSE_CODE_DETAILS%",
    "connection_termination_details": "%CONNECTION_TERMINATION_DETAILS%",
    "upstream_transport_failure_reason": "%UPSTREAM_TRANSPORT_FAILURE_REASON%",
    "bytes_received": "%BYTES_RECEIVED%",
    "bytes_sent": "%BYTES_SENT%",
    "duration": "%DURATION%",
    "upstream_service_time": "%RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)%",
    "x_forwarded_for": "%REQ(X-FORWARDED-FOR)%",
    "user_agent": "%REQ(USER-AGENT)%",
    "request_id": "%REQ(X-REQUEST-ID)%",
    "authority": "%REQ(:AUTHORITY)%",
    "upstream_host": "%UPSTREAM_HOST%",
    "upstream_cluster": "%UPSTREAM_CLUSTER_RAW%",
    "upstream_local_address": "%UPSTREAM_LOCAL_ADDRESS%",
    "downstream_local_address": "%DOWNSTREAM_LOCAL_ADDRESS%",
    "downstream_remote_address": "%DOWNSTREAM_REMOTE_ADDRESS%",
    "requested_server_name": "%REQUESTED_SERVER_NAME%",
    "route_name": "%ROUTE_NAME%",
}


@dataclass(frozen=True)
class FileSink:
    """One file access log: its path, and a text format or JSON labels (sorted pairs).
    Neither given: Istio's default text format; `json` with no labels: Istio's JSON."""

    path: str
    text: str = ""
    json: bool = False
    labels: tuple[tuple[str, str], ...] = ()
    filter: str = ""  # a CEL expression (Telemetry accessLogging filter)


@lru_cache(maxsize=1024)
def file_logger(sink: FileSink) -> accesslog_pb2.AccessLog:
    config = file_pb2.FileAccessLog(path=sink.path)
    if sink.json:
        fields = dict(sink.labels) if sink.labels else ISTIO_JSON_FORMAT
        config.log_format.CopyFrom(format_pb2.SubstitutionFormatString(json_format=_struct(fields)))
    else:
        text = sink.text or ISTIO_TEXT_FORMAT
        if not text.endswith("\n"):
            text += "\n"
        config.log_format.CopyFrom(
            format_pb2.SubstitutionFormatString(
                text_format_source=base_pb2.DataSource(inline_string=text)
            )
        )
    log = accesslog_pb2.AccessLog(name=FILE_LOGGER, typed_config=to_any(config))
    if sink.filter:  # Envoy's CEL access log filter: log only what the expression selects
        log.filter.extension_filter.name = CEL_FILTER
        log.filter.extension_filter.typed_config.Pack(
            cel_pb2.ExpressionFilter(expression=sink.filter)
        )
    return log


def _struct(fields: dict[str, str]) -> struct_pb2.Struct:
    out = struct_pb2.Struct()
    out.update(fields)
    return out
