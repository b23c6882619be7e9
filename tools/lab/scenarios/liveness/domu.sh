# The guest side of 'liveness': runs dom0's jobs (the serving ends) until dom0
# destroys this domain.

command -v xenvt >/dev/null || lab_fail "xenvt is not in the domU image"
lab_domu_jobs 300
