#!/bin/sh
# Healthy when the Kinesis API answers ListStreams (the emulator wants a SigV4-shaped
# Authorization header and an X-Amz-Date, like scripts/lib.sh's kinesis_call).
exec curl -sf --max-time 2 -o /dev/null -X POST "http://127.0.0.1:${KINESIS_PORT:-4567}" \
  -H "Content-Type: application/x-amz-json-1.1" -H "X-Amz-Target: Kinesis_20131202.ListStreams" \
  -H "X-Amz-Date: 20260101T000000Z" \
  -H "Authorization: AWS4-HMAC-SHA256 Credential=local/20260101/us-east-1/kinesis/aws4_request, SignedHeaders=host, Signature=0" \
  -d '{}'
