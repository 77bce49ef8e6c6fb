#!/usr/bin/env bash
# audiotok on Dataflow: the image, the Flex Template, a launch, a nightly refresh.
#
#   export PROJECT=my-project REGION=us-central1 BUCKET=gs://my-bucket REPO=audiotok
#   runners/dataflow/template.sh image                      # build + push the worker/launcher image
#   runners/dataflow/template.sh template                   # write the template spec to $TEMPLATE
#   runners/dataflow/template.sh run 'gs://my-bucket/corpus/**' gs://my-bucket/tokens
#   runners/dataflow/template.sh schedule 'gs://my-bucket/corpus/**' gs://my-bucket/tokens '0 3 * * *'
#
# Optional: IMAGE (default $REGION-docker.pkg.dev/$PROJECT/$REPO/audiotok:$TAG), TAG (0.1.0),
# TEMPLATE ($BUCKET/templates/audiotok-tokenize.json), PROFILE (dataflow or dataflow-gpu),
# TOKENIZER (logmel), SCHEDULER_SA (service account Cloud Scheduler launches as; needs
# roles/dataflow.developer and roles/iam.serviceAccountUser on the workers' account).
# Run from the repository root. PRINT_ONLY=1 prints the template spec instead of writing it.
set -euo pipefail
cd "$(dirname "$0")/../.."

: "${PROJECT:?set PROJECT}" "${REGION:?set REGION}" "${BUCKET:?set BUCKET (gs://...)}"
TAG=${TAG:-0.1.0}
IMAGE=${IMAGE:-$REGION-docker.pkg.dev/$PROJECT/${REPO:-audiotok}/audiotok:$TAG}
TEMPLATE=${TEMPLATE:-$BUCKET/templates/audiotok-tokenize.json}
PROFILE=${PROFILE:-dataflow}
TOKENIZER=${TOKENIZER:-logmel}

case "${1:-}" in
  image)
    docker build -f runners/dataflow/Dockerfile -t "$IMAGE" .
    docker push "$IMAGE"
    ;;
  template)
    gcloud dataflow flex-template build "$TEMPLATE" --project="$PROJECT" \
      --image="$IMAGE" --sdk-language=PYTHON --metadata-file=runners/dataflow/metadata.json \
      --temp-location="$BUCKET/tmp" ${PRINT_ONLY:+--print-only}
    ;;
  run)
    input=${2:?input pattern}; output=${3:?output folder}
    # '^~^' makes '~' the separator, so tokenizer specs may hold commas.
    gcloud dataflow flex-template run "audiotok-$(date -u +%Y%m%d-%H%M%S)" --project="$PROJECT" --region="$REGION" \
      --template-file-gcs-location="$TEMPLATE" --temp-location="$BUCKET/tmp" \
      --parameters="^~^input=$input~output=$output~tokenizer=$TOKENIZER~profile=$PROFILE~sdk_container_image=$IMAGE"
    ;;
  schedule)
    input=${2:?input pattern}; output=${3:?output folder}; cron=${4:-0 3 * * *}
    : "${SCHEDULER_SA:?set SCHEDULER_SA (the service account Cloud Scheduler launches as)}"
    body=$(python3 -c 'import json, sys; print(json.dumps({"launchParameter": {
        "jobName": "audiotok-refresh", "containerSpecGcsPath": sys.argv[1],
        "parameters": {"input": sys.argv[2], "output": sys.argv[3], "tokenizer": sys.argv[4],
                       "profile": sys.argv[5], "sdk_container_image": sys.argv[6]},
        "environment": {"tempLocation": sys.argv[7]}}}))' \
      "$TEMPLATE" "$input" "$output" "$TOKENIZER" "$PROFILE" "$IMAGE" "$BUCKET/tmp")
    gcloud scheduler jobs create http audiotok-refresh --project="$PROJECT" --location="$REGION" \
      --schedule="$cron" --time-zone=UTC --http-method=POST \
      --uri="https://dataflow.googleapis.com/v1b3/projects/$PROJECT/locations/$REGION/flexTemplates:launch" \
      --oauth-service-account-email="$SCHEDULER_SA" --oauth-token-scope=https://www.googleapis.com/auth/cloud-platform \
      --headers=Content-Type=application/json --message-body="$body"
    ;;
  *)
    sed -n '2,17p' "$0"
    exit 2
    ;;
esac
