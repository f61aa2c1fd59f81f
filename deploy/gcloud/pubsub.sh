#!/usr/bin/env bash
# Creates the Pub/Sub side of tq's topic classes (docs/pubsub.md) for a
# service already deployed (deploy/gcloud/setup.sh): the topic, its
# dead-letter topic, a push subscription delivering to the service's
# tq.pubsub.app endpoint with OIDC tokens, a pull subscription for a
# tq.pubsub.Subscriber worker, and the IAM all of them need.
#
# Usage: deploy/gcloud/pubsub.sh [--dry-run] PROJECT REGION SERVICE_URL
#   SERVICE_URL  e.g. https://orders-abc123-uc.a.run.app
#   --dry-run    print the commands instead of running them
# The topic, subscription and class names below are placeholders: rename
# them for your classes. Idempotent enough to re-run: "already exists"
# errors of create steps are ignored.
set -euo pipefail

dry=""
if [ "${1:-}" = "--dry-run" ]; then dry=1; shift; fi
PROJECT="${1:?usage: pubsub.sh [--dry-run] PROJECT REGION SERVICE_URL}"
REGION="${2:?usage: pubsub.sh [--dry-run] PROJECT REGION SERVICE_URL}"
URL="${3:?usage: pubsub.sh [--dry-run] PROJECT REGION SERVICE_URL}"
SERVICE=orders
TOPIC=order-events                 # TaskClass(topic="order-events")
DEAD=order-events-dead-letter      # where messages go after MAX_ATTEMPTS nacks
PUSH_SUB=order-events-audit        # pushed to the service
PULL_SUB=order-events-mailer       # pulled by a tq.pubsub.Subscriber worker
MAX_ATTEMPTS=5
APP_SA="orders-app@$PROJECT.iam.gserviceaccount.com"                 # publishes
PUBSUB_PUSH_SA="tq-pubsub-pusher@$PROJECT.iam.gserviceaccount.com"   # push tokens
WORKER_SA="orders-worker@$PROJECT.iam.gserviceaccount.com"           # pulls

run() {
  if [ -n "$dry" ]; then printf '%q ' "$@"; echo; else "$@"; fi
}
create() {  # a create step: "already exists" is fine
  if [ -n "$dry" ]; then run "$@"; return; fi
  out="$("$@" 2>&1)" || { grep -q "already exists\|ALREADY_EXISTS" <<<"$out" || { echo "$out" >&2; return 1; }; }
}

if [ -n "$dry" ]; then
  NUMBER=123456789
else
  NUMBER="$(gcloud projects describe "$PROJECT" --format='value(projectNumber)')"
fi
# Pub/Sub's own service agent: it signs push tokens and moves dead letters.
AGENT="service-$NUMBER@gcp-sa-pubsub.iam.gserviceaccount.com"

run gcloud config set project "$PROJECT"
run gcloud services enable pubsub.googleapis.com

create gcloud iam service-accounts create tq-pubsub-pusher --display-name="Pub/Sub pushes (OIDC)"
create gcloud iam service-accounts create orders-worker --display-name="tq.pubsub.Subscriber worker"

# Topics. The dead-letter topic has a subscription so that its messages are kept.
create gcloud pubsub topics create "$TOPIC"
create gcloud pubsub topics create "$DEAD"
create gcloud pubsub subscriptions create "$DEAD-keep" --topic="$DEAD" \
  --message-retention-duration=7d --expiration-period=never

# The app publishes (the happy path, the sweeper, tq parked replay).
run gcloud pubsub topics add-iam-policy-binding "$TOPIC" \
  --member="serviceAccount:$APP_SA" --role=roles/pubsub.publisher

# Push: tokens for tq-pubsub-pusher, audience the endpoint URL (tq.pubsub.app
# accepts it; give authorized_pushers=[PUBSUB_PUSH_SA]). Only this service's
# classes (a subscription filter): other classes on the topic never arrive.
create gcloud pubsub subscriptions create "$PUSH_SUB" --topic="$TOPIC" \
  --push-endpoint="$URL/internal/pubsub/$PUSH_SUB" \
  --push-auth-service-account="$PUBSUB_PUSH_SA" \
  --push-auth-token-audience="$URL/internal/pubsub/$PUSH_SUB" \
  --ack-deadline=60 --min-retry-delay=10s --max-retry-delay=600s \
  --dead-letter-topic="$DEAD" --max-delivery-attempts="$MAX_ATTEMPTS" \
  --message-filter='attributes.tq_class = "order-placed"'
run gcloud iam service-accounts add-iam-policy-binding "$PUBSUB_PUSH_SA" \
  --member="serviceAccount:$AGENT" --role=roles/iam.serviceAccountTokenCreator
run gcloud run services add-iam-policy-binding "$SERVICE" --region="$REGION" \
  --member="serviceAccount:$PUBSUB_PUSH_SA" --role=roles/run.invoker

# Pull: a worker (python -c 'tq.pubsub.Subscriber(...)', see docs/pubsub.md).
create gcloud pubsub subscriptions create "$PULL_SUB" --topic="$TOPIC" \
  --ack-deadline=60 --min-retry-delay=10s --max-retry-delay=600s \
  --dead-letter-topic="$DEAD" --max-delivery-attempts="$MAX_ATTEMPTS"
run gcloud pubsub subscriptions add-iam-policy-binding "$PULL_SUB" \
  --member="serviceAccount:$WORKER_SA" --role=roles/pubsub.subscriber

# Dead-lettering: the service agent publishes to the dead-letter topic and
# acks the original on the subscriptions that have the policy.
run gcloud pubsub topics add-iam-policy-binding "$DEAD" \
  --member="serviceAccount:$AGENT" --role=roles/pubsub.publisher
for sub in "$PUSH_SUB" "$PULL_SUB"; do
  run gcloud pubsub subscriptions add-iam-policy-binding "$sub" \
    --member="serviceAccount:$AGENT" --role=roles/pubsub.subscriber
done
echo "topic $TOPIC: push $PUSH_SUB -> $URL/internal/pubsub/$PUSH_SUB, pull $PULL_SUB, dead letters $DEAD"
