// GatewayError: a call that ended with a non-OK gRPC status, with its google.rpc status details decoded.

import { Code, ConnectError } from "@connectrpc/connect";
import {
  BadRequestSchema,
  ErrorInfoSchema,
  QuotaFailureSchema,
  RetryInfoSchema,
  type BadRequest,
  type ErrorInfo,
  type QuotaFailure,
} from "./gen/google/rpc/error_details_pb.js";

/** gRPC status code names by number, as the gateway's documentation and other clients print them. */
export const STATUS_NAMES: Readonly<Record<number, string>> = {
  0: "OK",
  1: "CANCELLED",
  2: "UNKNOWN",
  3: "INVALID_ARGUMENT",
  4: "DEADLINE_EXCEEDED",
  5: "NOT_FOUND",
  6: "ALREADY_EXISTS",
  7: "PERMISSION_DENIED",
  8: "RESOURCE_EXHAUSTED",
  9: "FAILED_PRECONDITION",
  10: "ABORTED",
  11: "OUT_OF_RANGE",
  12: "UNIMPLEMENTED",
  13: "INTERNAL",
  14: "UNAVAILABLE",
  15: "DATA_LOSS",
  16: "UNAUTHENTICATED",
};

export class GatewayError extends Error {
  /** The gRPC status code (Connect's `Code` enum has the same numbers). */
  readonly code: Code;
  /** The status message, as the gateway wrote it. */
  readonly details: string;
  /** google.rpc.ErrorInfo: reason, domain "claude-gateway", metadata error_type, request_id, events_delivered. */
  readonly errorInfo: ErrorInfo | undefined;
  /** Seconds to wait before retrying, from google.rpc.RetryInfo. */
  readonly retryDelaySeconds: number | undefined;
  /** google.rpc.BadRequest: each offending request field. */
  readonly badRequest: BadRequest | undefined;
  /** google.rpc.QuotaFailure, when a quota refused the call. */
  readonly quotaFailure: QuotaFailure | undefined;
  /** The response headers and trailers that came with the status. */
  readonly metadata: Headers;
  /** The ConnectError this was made from. */
  override readonly cause: ConnectError;

  constructor(error: ConnectError, details?: string) {
    const message = details ?? error.rawMessage;
    super(`${STATUS_NAMES[error.code] ?? error.code}: ${message}`);
    this.name = "GatewayError";
    this.code = error.code;
    this.details = message;
    this.cause = error;
    this.metadata = error.metadata;
    this.errorInfo = error.findDetails(ErrorInfoSchema)[0];
    const retry = error.findDetails(RetryInfoSchema)[0]?.retryDelay;
    this.retryDelaySeconds = retry === undefined ? undefined : Number(retry.seconds) + retry.nanos / 1e9;
    this.badRequest = error.findDetails(BadRequestSchema)[0];
    this.quotaFailure = error.findDetails(QuotaFailureSchema)[0];
  }

  /** Any thrown value as a GatewayError (a non-Connect error becomes UNKNOWN, an abort CANCELLED). */
  static from(reason: unknown, details?: string): GatewayError {
    if (reason instanceof GatewayError) return reason;
    return new GatewayError(ConnectError.from(reason, Code.Unknown), details);
  }

  /** The status code's name, e.g. "INVALID_ARGUMENT". */
  get codeName(): string {
    return STATUS_NAMES[this.code] ?? String(this.code);
  }

  /** The Messages API error type (e.g. "rate_limit_error"), when the failure came from upstream. */
  get errorType(): string | undefined {
    return this.errorInfo?.metadata["error_type"];
  }

  /** The upstream request id, when the upstream answered. */
  get requestId(): string | undefined {
    return this.errorInfo?.metadata["request_id"];
  }

  /** Each offending field and why, from google.rpc.BadRequest. */
  get violations(): Array<{ field: string; description: string }> {
    return (this.badRequest?.fieldViolations ?? []).map((v) => ({ field: v.field, description: v.description }));
  }

  /** Every detail, one per line, for people reading a terminal. */
  describe(): string {
    const lines = [`${this.codeName}: ${this.details}`];
    const info = this.errorInfo;
    if (info !== undefined) {
      const meta = Object.keys(info.metadata)
        .sort()
        .map((k) => `${k}=${info.metadata[k]}`)
        .join(" ");
      lines.push(`  reason: ${info.reason} (${info.domain}) ${meta}`.trimEnd());
    }
    if (this.retryDelaySeconds !== undefined) lines.push(`  retry after: ${this.retryDelaySeconds}s`);
    for (const v of this.violations) lines.push(`  bad field ${v.field}: ${v.description}`);
    for (const v of this.quotaFailure?.violations ?? []) lines.push(`  quota ${v.subject}: ${v.description}`);
    return lines.join("\n");
  }
}
