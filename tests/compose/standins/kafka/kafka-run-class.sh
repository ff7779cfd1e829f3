#!/bin/bash
# Runs a Kafka main class on the image's jars, as Kafka's own kafka-run-class.sh: the broker logs with
# /opt/kafka/config/log4j2.yaml, every tool with tools-log4j2.yaml (warnings to stderr only).
class=$1
shift
if [ "$class" = kafka.Kafka ]; then
    heap=${KAFKA_HEAP_OPTS:--Xmx1G -Xms1G}
    logging=/opt/kafka/config/log4j2.yaml
else
    heap="-Xmx256m"
    logging=/opt/kafka/config/tools-log4j2.yaml
    [ -f "$logging" ] || logging=/etc/kafka/docker/tools-log4j2.yaml
fi
# shellcheck disable=SC2086  # the options are words
exec java $heap ${KAFKA_OPTS:-} "-Dlog4j2.configurationFile=$logging" -cp '/opt/kafka/libs/*' "$class" "$@"
