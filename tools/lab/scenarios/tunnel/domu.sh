# The guest side of 'tunnel': runs dom0's jobs (the agent, and the checked data
# ends behind it; helpers in guest.sh) until dom0 destroys this domain.

command -v xenvt >/dev/null || lab_fail "xenvt is not in the domU image"
lab_domu_jobs 300
