#!/usr/bin/env bash
# Creates what the orders example needs on Google Cloud and deploys it to
# Cloud Run: APIs, service accounts and IAM for OIDC pushes, the Cloud Tasks
# queues (tq-sweep included), the image, the service, and the Cloud
# Scheduler jobs (the sweep every minute, the daily report).
#
# Usage: deploy/gcloud/setup.sh [--dry-run] PROJECT REGION
#   --dry-run  print the commands instead of running them
# Needs: gcloud (logged in, with rights to create all of the above), docker,
# and a Cloud SQL for PostgreSQL instance "orders-db" whose URL is stored in
# Secret Manager as "orders-database-url" (postgresql+psycopg://...).
# Idempotent enough to re-run: "already exists" errors of create steps are
# ignored.
set -euo pipefail

dry=""
if [ "${1:-}" = "--dry-run" ]; then dry=1; shift; fi
PROJECT="${1:?usage: setup.sh [--dry-run] PROJECT REGION}"
REGION="${2:?usage: setup.sh [--dry-run] PROJECT REGION}"
SERVICE=orders
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
IMAGE="$REGION-docker.pkg.dev/$PROJECT/tq/$SERVICE:latest"
APP_SA="orders-app@$PROJECT.iam.gserviceaccount.com"          # runs the service
PUSH_SA="tq-pusher@$PROJECT.iam.gserviceaccount.com"          # Cloud Tasks signs pushes as it
SCHED_SA="tq-scheduler@$PROJECT.iam.gserviceaccount.com"      # Cloud Scheduler calls as it

run() {
  if [ -n "$dry" ]; then printf '%q ' "$@"; echo; else "$@"; fi
}
create() {  # a create step: "already exists" is fine
  if [ -n "$dry" ]; then run "$@"; return; fi
  out="$("$@" 2>&1)" || { grep -q "already exists\|ALREADY_EXISTS" <<<"$out" || { echo "$out" >&2; return 1; }; }
}

run gcloud config set project "$PROJECT"
run gcloud services enable cloudtasks.googleapis.com run.googleapis.com \
  cloudscheduler.googleapis.com iamcredentials.googleapis.com \
  artifactregistry.googleapis.com secretmanager.googleapis.com sqladmin.googleapis.com

# Service accounts and IAM.
create gcloud iam service-accounts create orders-app --display-name="orders service"
create gcloud iam service-accounts create tq-pusher --display-name="Cloud Tasks pushes (OIDC)"
create gcloud iam service-accounts create tq-scheduler --display-name="Cloud Scheduler sweeps and cron (OIDC)"
for role in roles/cloudtasks.enqueuer roles/cloudtasks.viewer roles/cloudsql.client \
            roles/secretmanager.secretAccessor; do
  run gcloud projects add-iam-policy-binding "$PROJECT" --member="serviceAccount:$APP_SA" \
    --role="$role" --condition=None
done
# The app creates tasks that carry OIDC tokens of tq-pusher: it must act as it.
run gcloud iam service-accounts add-iam-policy-binding "$PUSH_SA" \
  --member="serviceAccount:$APP_SA" --role=roles/iam.serviceAccountUser

# Queues (mirroring deploy/appengine/queue.yaml). Sweep tasks are never retried.
create gcloud tasks queues create emails --location="$REGION" \
  --max-dispatches-per-second=20 --max-concurrent-dispatches=40 \
  --min-backoff=1s --max-backoff=300s --max-retry-duration=2d --max-attempts=-1
create gcloud tasks queues create default --location="$REGION" \
  --max-dispatches-per-second=50 --max-concurrent-dispatches=100
create gcloud tasks queues create tq-sweep --location="$REGION" \
  --max-dispatches-per-second=100 --max-attempts=1

# The image and the service.
create gcloud artifacts repositories create tq --location="$REGION" --repository-format=docker
run gcloud auth configure-docker "$REGION-docker.pkg.dev" --quiet
run docker build -f "$ROOT/deploy/Dockerfile" -t "$IMAGE" "$ROOT"
run docker push "$IMAGE"
manifest="$(mktemp)"
sed -e "s/__PROJECT__/$PROJECT/g" -e "s/__REGION__/$REGION/g" \
  "$ROOT/deploy/cloudrun/service.yaml" > "$manifest"
run gcloud run services replace "$manifest" --region="$REGION"
if [ -n "$dry" ]; then
  URL="https://$SERVICE-HASH-uc.a.run.app"
else
  URL="$(gcloud run services describe "$SERVICE" --region="$REGION" --format='value(status.url)')"
fi
HOST="${URL#https://}"
# Pushes come back to the service's own host; tq checks tokens for https://HOST.
run gcloud run services update "$SERVICE" --region="$REGION" \
  --update-env-vars="TQ_TARGET_HOST=$HOST"
for sa in "$PUSH_SA" "$SCHED_SA"; do
  run gcloud run services add-iam-policy-binding "$SERVICE" --region="$REGION" \
    --member="serviceAccount:$sa" --role=roles/run.invoker
done

# Cloud Scheduler: the distributed sweep every minute, and one job per task class
# with a cron schedule (the daily report), as printed by
#   tq schedules --app examples.orders.main:app --format gcloud --target-host "$HOST" \
#     --cloud-region "$REGION" --authorized-launchers "$SCHED_SA"
create gcloud scheduler jobs create http tq-sweep --location="$REGION" \
  --schedule="* * * * *" --uri="$URL/internal/tasks/c/sweep" --http-method=GET \
  --oidc-service-account-email="$SCHED_SA" --oidc-token-audience="$URL"
create gcloud scheduler jobs create http tq-cron-daily-report --location="$REGION" \
  --schedule="5 0 * * *" --time-zone=Etc/UTC --uri="$URL/internal/tasks/c/cron/daily-report" \
  --http-method=POST --oidc-service-account-email="$SCHED_SA" --oidc-token-audience="$URL"

# Tables: run once from a machine that reaches the database, e.g. through the
# Cloud SQL Auth Proxy:  tq db migrate --db "$(gcloud secrets versions access latest --secret=orders-database-url)"
echo "deployed $URL"
