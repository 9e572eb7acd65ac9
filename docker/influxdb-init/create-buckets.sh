#!/bin/sh
# Runs once inside the official influxdb image after its setup: the long-retention buckets.
set -e
influx bucket create --org dcpulse --name dcpulse_analytics --retention 400d
influx bucket create --org dcpulse --name dcpulse_alerts --retention 400d
