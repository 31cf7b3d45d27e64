"""The first example of LANGUAGE.md §1, verbatim: several test files check it."""

FLU = '''\
# SIR outbreak in a boarding school, with reporting of the infectious only
model flu_sir "SIR model for the 1978 boarding-school influenza outbreak"

time t [day]
unit person                               # a new base unit, for counting

const N     [person] = 763
param beta  [1/day]  = 1.5  in [0.1, 5]     "transmission rate"
param gamma [1/day]  = 0.5  in [0.05, 2]    "recovery rate"
param I0    [person] = 1    in [0.1, 20]

state S [person] = N - I0     in [0, inf]
state I [person] = I0         in [0, inf]
state R [person] = 0          in [0, inf]

flow S -> I = beta * S * I / N
flow I -> R = gamma * I

observe in_bed [person] = I ~ normal(sigma = 10 [person])

scenario isolation "half the contacts from day 3"
  set beta = 0.5 * beta from 3
end
'''
