#!/bin/bash
# The entry point of every image Berth builds with buildpacks (Heroku's start-up): in /app,
# source .profile.d/*.sh and .profile, then run the process's command (`sh -c COMMAND`, or the
# image's CMD, which is the web process).
cd /app || exit 1
for berth_profile in /app/.profile.d/*.sh; do
  if [ -r "$berth_profile" ]; then
    # shellcheck disable=SC1090
    . "$berth_profile"
  fi
done
unset berth_profile
if [ -r /app/.profile ]; then
  . /app/.profile
fi
exec "$@"
