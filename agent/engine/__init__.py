"""The upload engine's parts; `agent.upload.SessionUploader` composes them.

- `context`: what every part is handed (settings, ledger, store, clock) and the object
  metadata and checksum header they share;
- `pipeline`: the one driver of a pass (byte budget, worker pool, one error mapping);
- `reading`: source files read once, in order, into units for the pipeline;
- `single_put`: a whole small file in one conditional PUT, and the existing-object policy;
- `multipart`: one file's resumable multipart upload, from open or resume to complete or abort;
- `manifest`: the session's manifest document, written last.

None of them imports boto3 or sqlite_utils: S3 is reached through `agent.transfer.S3Store`,
the database through the `agent.state.Ledger` protocol.
"""
