# The guest side of 'interop': runs dom0's jobs (our server, or libxenvchan's
# server in front of a checked unix-socket end).

command -v xenvt >/dev/null || lab_fail "xenvt is not in the domU image"
lab_domu_jobs 300
